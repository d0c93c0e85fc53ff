"""`loss-service upload`: arrays from .npy / .npz files into an evaluation run, a batch of rows
at a time, through the client's run handle (`service.client.Run`). Resumable.

A source is an .npz holding `logits` and `labels`, or a `--logits` / `--labels` pair of files;
a batch is a range of its rows (axis 0). A batch's id comes from its content:
`rows-START-STOP-HASH`, HASH the first 32 hex digits of the digest the service records for it
(`Run.batch_digest`: its dtypes, shapes and bytes). The same command run again therefore
derives the same ids, and asks the run for each before sending it: a batch stored with the same
digest is skipped; one stored under its id with another digest stops the upload. Sending is
idempotent as well: a batch that reaches the run twice (a retry, two uploads at once) counts once.

So the same rows with the same bytes are the same batch: a file uploaded twice into one run
counts once. The ids depend on the batch size: resume with the `--batch-rows` the upload began
with (the default depends only on the arrays' shapes and dtypes, so it is the same again).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from numpy.typing import NDArray

from service.client import Run
from service.npy_files import load_arrays

# A batch is one request, which the service reads into memory and computes on in one go: about
# this many bytes of logits and labels, far below its default body limit (512 MiB), and small
# enough that a retry sends little again.
BATCH_BYTES = 32 * 2**20
ID_DIGEST_CHARS = 32  # 128 bits of the digest: ids stay short, and distinct batches distinct

Progress = Callable[[int, int], None]  # (rows done, rows in all)


class UploadError(Exception):
    """The upload cannot go on: the message says why and what to do."""


@dataclass(frozen=True)
class Source:
    name: str  # for messages: the file(s) it came from
    logits: NDArray[Any]
    labels: NDArray[Any]

    @property
    def rows(self) -> int:
        return int(self.logits.shape[0])


@dataclass(frozen=True)
class Summary:
    batches: int
    sent: int  # added to the run by this upload
    stored_before: int  # found in the run with the same digest, not sent again
    rows: int


def read_sources(
    npz_files: Sequence[str], logits: str | None = None, labels: str | None = None
) -> list[Source]:
    """The sources named on the command line, memory-mapped where the files allow it."""
    found = []
    for path in npz_files:
        arrays = load_arrays(path)
        missing = [name for name in ("logits", "labels") if name not in arrays]
        if missing:
            raise ValueError(
                f"{path}: no array named {' or '.join(missing)} (it has {', '.join(arrays)})"
            )
        found.append(Source(path, arrays["logits"], arrays["labels"]))
    if (logits is None) != (labels is None):
        raise ValueError("--logits and --labels go together")
    if logits is not None and labels is not None:
        pair = load_arrays(logits, default_key="logits") | load_arrays(labels, default_key="labels")
        found.append(Source(f"{logits} + {labels}", pair["logits"], pair["labels"]))
    if not found:
        raise ValueError("nothing to upload: name .npz files, or --logits and --labels")
    for source in found:
        if source.logits.ndim == 0 or source.labels.shape[:1] != source.logits.shape[:1]:
            raise ValueError(
                f"{source.name}: logits {list(source.logits.shape)} and labels "
                f"{list(source.labels.shape)} do not have the same rows (axis 0)"
            )
    return found


def default_batch_rows(sources: Sequence[Source]) -> int:
    """Rows per batch so that a batch holds about BATCH_BYTES (from the widest source)."""
    per_row = max((s.logits.nbytes + s.labels.nbytes) / max(s.rows, 1) for s in sources)
    return max(1, int(BATCH_BYTES // per_row)) if per_row else 1


def upload(
    run: Run, sources: Sequence[Source], batch_rows: int, progress: Progress | None = None
) -> Summary:
    """Send every batch of `sources` that `run` does not hold yet; what was done."""
    if batch_rows < 1:
        raise ValueError("--batch-rows must be at least 1")
    total = sum(source.rows for source in sources)
    done = sent = stored = batches = 0
    for source, start, stop in _batches(sources, batch_rows):
        logits, labels = source.logits[start:stop], source.labels[start:stop]
        digest = Run.batch_digest(logits, labels)
        batch_id = f"rows-{start}-{stop}-{digest[:ID_DIGEST_CHARS]}"
        found = run.batch(batch_id)
        if found is None:
            receipt = run.add_batch(logits, labels, batch_id)
            _same_digest(source, batch_id, digest, receipt.digest)
            sent += 1
        else:
            _same_digest(source, batch_id, digest, found.digest)
            stored += 1
        batches += 1
        done += stop - start
        if progress is not None:
            progress(done, total)
    return Summary(batches=batches, sent=sent, stored_before=stored, rows=total)


def _batches(sources: Sequence[Source], batch_rows: int) -> Iterator[tuple[Source, int, int]]:
    for source in sources:
        for start in range(0, source.rows, batch_rows):
            yield source, start, min(start + batch_rows, source.rows)


def _same_digest(source: Source, batch_id: str, ours: str, theirs: str) -> None:
    if ours != theirs:
        raise UploadError(
            f"{source.name}: the run holds batch {batch_id} with digest {theirs}, but these rows "
            f"have digest {ours}; the batch id was used for other data (or this client and the "
            "service compute digests differently): upload into a new run"
        )
