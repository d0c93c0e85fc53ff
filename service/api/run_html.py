"""Evaluation runs as HTML for people: a run's report, the list of runs, an error.

Pure functions from the run models to text. Everything a client chose (names, metadata, option
values) goes through `html.escape`. The pages load nothing: the CSS is inline, the reliability
diagram is inline SVG, and their Content-Security-Policy (`service.api.run_pages`) allows no
script and no request.

Numbers are shown to 6 significant digits (counts in full). Each carries its exact value, the
number `GET /v1/runs/{id}` answers (Python's shortest repr), in `data-value` and `title`, and its
place in that answer in `data-field` (`losses[0].loss`, `calibration.bins[3].count`), so that
every number on a page can be traced to the API's.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from service.core.runs.models import Run, RunList, RunSummary
from service.schemas.calibration import CalibrationResponse

NULL = "\N{EN DASH}"
MAX_OPTION_CHARS = 80  # a longer option value (a weight vector) is cut; its title has more:
MAX_TITLE_CHARS = 4096  # this much (the JSON answer has all of a 10^5-class vector)

_CSS = """
:root { color-scheme: light; --line: #d0d7de; --muted: #57606a; --accent: #0969da; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: #1f2328; background: #fff; }
header { padding: 0.6rem 1.5rem; border-bottom: 1px solid var(--line); background: #f6f8fa; }
header a { margin-right: 1rem; }
main { max-width: 72rem; padding: 0.5rem 1.5rem 3rem; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
h1 { font-size: 1.6rem; margin: 1rem 0 0.2rem; overflow-wrap: anywhere; }
h2 { font-size: 1.2rem; margin: 2rem 0 0.5rem; border-bottom: 1px solid var(--line); }
p.sub, p.note, td.what { color: var(--muted); }
table { border-collapse: collapse; margin: 0.4rem 0; }
th, td { padding: 0.25rem 0.75rem; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { font-weight: 600; background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { overflow-wrap: anywhere; max-width: 40rem; }
code { font: 0.9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  overflow-wrap: anywhere; }
.status { font-size: 0.8rem; padding: 0.1rem 0.5rem; border-radius: 1rem; vertical-align: middle;
  border: 1px solid var(--line); }
.status-open { background: #dafbe1; }
.status-closed { background: #eaeef2; }
figure { margin: 1rem 0; }
figure svg { max-width: 100%; height: auto; }
nav.pages a { margin-right: 1.5rem; }
"""

# Label, field of the calibration report, what it is.
_METRICS = (
    ("ECE", "ece", "expected calibration error: bin-weighted mean |accuracy - confidence|"),
    ("MCE", "mce", "maximum calibration error over non-empty bins"),
    ("RMSCE", "rmsce", "root-mean-square calibration error"),
    ("Debiased ECE", "ece_debiased", "debiased L2 calibration error (Kumar et al. 2019)"),
    ("Classwise ECE", "classwise_ece", "mean over classes of each class's ECE"),
    ("Brier", "brier", "mean squared error of the probabilities"),
    ("NLL", "nll", "mean negative log-likelihood of the label"),
    ("Accuracy", "accuracy", "fraction of top-1 predictions equal to the label"),
    ("Mean confidence", "mean_confidence", "mean top-label probability (binary: mean of p)"),
)


def run_page(run: Run, diagram_svg: str | None, *, root: str) -> str:
    """A run's page: its facts, metadata, losses, calibration and reliability diagram."""
    title = run.name or "Unnamed run"
    json_url = f"{root}/v1/runs/{quote(run.id)}"
    parts = [
        f"<h1>{escape(title)} {_status(run.status)}</h1>",
        f'<p class="sub">Run <code>{escape(run.id)}</code> &middot; '
        f'<a href="{escape(json_url)}">as JSON</a></p>',
        "<h2>Summary</h2>",
        _facts(run),
        "<h2>Metadata</h2>",
        _metadata(run.metadata),
        "<h2>Losses</h2>",
        _losses(run),
        "<h2>Calibration</h2>",
        _calibration(run, diagram_svg),
    ]
    return _frame(title, "\n".join(parts), root=root)


def runs_page(runs: RunList, *, root: str, limit: int, cursor: str | None) -> str:
    """The list of runs, newest first, a page at a time (the cursor of `GET /v1/runs`)."""
    if runs.runs:
        rows = "\n".join(_run_row(index, run, root) for index, run in enumerate(runs.runs))
        table = (
            "<table><thead><tr><th>Name</th><th>Status</th><th>Batches</th><th>Samples</th>"
            f"<th>Created</th><th>Updated</th></tr></thead><tbody>\n{rows}\n</tbody></table>"
        )
    else:
        table = '<p class="note">No runs here. Create one with <code>POST /v1/runs</code>.</p>'
    links = []
    if cursor is not None:
        links.append(f'<a href="{escape(_list_url(root, limit))}">First page</a>')
    if runs.next_cursor is not None:
        next_url = _list_url(root, limit, runs.next_cursor)
        links.append(f'<a rel="next" href="{escape(next_url)}">Next page</a>')
    nav = f'<nav class="pages">{"".join(links)}</nav>' if links else ""
    return _frame("Evaluation runs", f"<h1>Evaluation runs</h1>\n{table}\n{nav}", root=root)


def error_page(status: int, title: str, detail: str, *, root: str, advice: str = "") -> str:
    """An error as a page: the problem's status, title and detail, and what to do (`advice`,
    HTML written by the caller, never from the request)."""
    body = (
        f"<h1>{status} {escape(title)}</h1>\n<p>{escape(detail)}</p>\n{advice}\n"
        f'<p><a href="{escape(root)}/runs">All runs</a></p>'
    )
    return _frame(f"{status} {title}", body, root=root)


def inline_svg(svg: str) -> str:
    """An SVG document as an element to put inside HTML: from `<svg` on, without the metadata
    block (whose RDF namespaces mean nothing in HTML), labelled for screen readers."""
    element = svg[svg.index("<svg") :]
    element = re.sub(r"<metadata>.*?</metadata>\s*", "", element, count=1, flags=re.DOTALL)
    return element.replace("<svg", '<svg role="img" aria-label="Reliability diagram"', 1)


# --- parts ---------------------------------------------------------------------------------


def _frame(title: str, body: str, *, root: str) -> str:
    home = escape(f"{root}/runs")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{escape(title)} - Loss service</title>
<style>{_CSS}</style>
</head>
<body>
<header><a href="{home}">Evaluation runs</a><a href="{escape(root)}/docs">API docs</a></header>
<main>
{body}
</main>
</body>
</html>
"""


def _facts(run: Run) -> str:
    rows = [
        f'<tr><th>Status</th><td data-field="status">{escape(run.status)}</td></tr>',
        f"<tr><th>Batches</th>{_number(run.n_batches, 'n_batches')}</tr>",
        f"<tr><th>Samples</th>{_number(run.n_samples, 'n_samples')}</tr>",
        f"<tr><th>Created</th><td>{_time(run.created_at, 'created_at')}</td></tr>",
        f"<tr><th>Updated</th><td>{_time(run.updated_at, 'updated_at')}</td></tr>",
    ]
    if run.spec.compute_dtype is not None:
        rows.append(f"<tr><th>Compute dtype</th><td>{escape(run.spec.compute_dtype)}</td></tr>")
    return '<table class="facts">' + "".join(rows) + "</table>"


def _metadata(metadata: dict[str, str]) -> str:
    if not metadata:
        return '<p class="note">No metadata.</p>'
    rows = "".join(
        f'<tr><th>{escape(key)}</th><td class="text">{escape(value)}</td></tr>'
        for key, value in sorted(metadata.items())
    )
    return f'<table class="metadata">{rows}</table>'


def _losses(run: Run) -> str:
    if not run.losses:
        return '<p class="note">This run computes no loss.</p>'
    rows = []
    for index, (total, entry) in enumerate(zip(run.losses, run.spec.losses, strict=True)):
        at = f"losses[{index}]"
        options = entry.model_dump(mode="json", exclude={"name"}, exclude_none=True)
        rows.append(
            f"<tr><td><code>{escape(total.name)}</code></td>"
            f"{_number(total.loss, f'{at}.loss')}{_number(total.n_valid, f'{at}.n_valid')}"
            f"{_number(total.weight_sum, f'{at}.weight_sum')}"
            f'<td class="text">{_options(options)}</td></tr>'
        )
    return (
        '<table class="losses"><thead><tr><th>Loss</th><th>Value</th><th>n_valid</th>'
        "<th>weight_sum</th><th>Options</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _options(options: dict[str, Any]) -> str:
    shown = []
    for key, value in options.items():
        text = json.dumps(value, separators=(",", ":"))
        cut, title = _cut(text, MAX_OPTION_CHARS), _cut(text, MAX_TITLE_CHARS)
        shown.append(f'<code title="{escape(title)}">{escape(key)}={escape(cut)}</code>')
    return " ".join(shown)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}\N{HORIZONTAL ELLIPSIS}"


def _calibration(run: Run, diagram_svg: str | None) -> str:
    report = run.calibration
    if report is None:
        if run.spec.calibration is None:
            return '<p class="note">This run computes no calibration statistics.</p>'
        return '<p class="note">No calibration statistics yet: no batch has arrived.</p>'
    parts = [
        f'<p class="sub">{escape(report.task)}, {report.n:,} samples (labels other than -100), '
        f"{report.n_classes:,} classes, {report.n_bins} {escape(report.binning)} bins</p>",
        _metrics(report),
    ]
    if diagram_svg is not None:
        parts.append(f"<figure>{inline_svg(diagram_svg)}</figure>")
    parts.append(_bins(report))
    return "\n".join(parts)


def _metrics(report: CalibrationResponse) -> str:
    rows = [
        f"<tr><th>{label}</th>{_number(getattr(report, key), f'calibration.{key}')}"
        f'<td class="what">{what}</td></tr>'
        for label, key, what in _METRICS
    ]
    rows += [
        f"<tr><th>Top-{entry.k} accuracy</th>"
        f"{_number(entry.accuracy, f'calibration.top_k_accuracy[{index}].accuracy')}"
        f'<td class="what">fraction of labels among the {entry.k} most probable classes</td></tr>'
        for index, entry in enumerate(report.top_k_accuracy)
    ]
    return '<table class="metrics">' + "".join(rows) + "</table>"


def _bins(report: CalibrationResponse) -> str:
    rows = []
    for index, item in enumerate(report.bins):
        at = f"calibration.bins[{index}]"
        rows.append(
            f"<tr>{_number(index, '')}{_number(item.lower, f'{at}.lower')}"
            f"{_number(item.upper, f'{at}.upper')}{_number(item.count, f'{at}.count')}"
            f"{_number(item.mean_confidence, f'{at}.mean_confidence')}"
            f"{_number(item.accuracy, f'{at}.accuracy')}</tr>"
        )
    accuracy = "Observed frequency" if report.task == "binary" else "Accuracy"
    return (
        '<table class="bins"><thead><tr><th>Bin</th><th>Lower</th><th>Upper</th><th>Count</th>'
        f"<th>Mean confidence</th><th>{accuracy}</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _run_row(index: int, run: RunSummary, root: str) -> str:
    at = f"runs[{index}]"
    link = escape(f"{root}/runs/{quote(run.id)}")
    name = escape(run.name) if run.name else f"<em>unnamed</em> <code>{escape(run.id)}</code>"
    return (
        f'<tr><td class="text"><a href="{link}">{name}</a></td><td>{_status(run.status)}</td>'
        f"{_number(run.n_batches, f'{at}.n_batches')}{_number(run.n_samples, f'{at}.n_samples')}"
        f"<td>{_time(run.created_at, f'{at}.created_at')}</td>"
        f"<td>{_time(run.updated_at, f'{at}.updated_at')}</td></tr>"
    )


def _list_url(root: str, limit: int, cursor: str | None = None) -> str:
    query = {"limit": limit, **({"cursor": cursor} if cursor is not None else {})}
    return f"{root}/runs?{urlencode(query)}"


def _status(status: str) -> str:
    return f'<span class="status status-{escape(status)}">{escape(status)}</span>'


def _number(value: float | None, field: str) -> str:
    """A table cell: the value readably, the exact value in `data-value` and `title`."""
    if value is None:
        shown, exact = NULL, "null"
    elif isinstance(value, int):
        shown, exact = f"{value:,}", str(value)
    else:
        shown, exact = f"{value:.6g}", repr(value)
    where = f' data-field="{escape(field)}"' if field else ""
    return f'<td class="num"{where} data-value="{exact}" title="{exact}">{shown}</td>'


def _time(value: datetime, field: str) -> str:
    """An instant in UTC, to the second; the exact one (as the API writes it) in `datetime`."""
    exact = escape(value.isoformat())
    shown = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f'<time datetime="{exact}" data-field="{escape(field)}" title="{exact}">{shown}</time>'
