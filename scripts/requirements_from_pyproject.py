"""Print the dependencies (and those of the extras named as arguments) in pyproject.toml.

The Dockerfile installs these before it copies the code, so that the dependency layer is reused
until pyproject.toml changes. Standard library only: it runs on the bare base image.

    python3 requirements_from_pyproject.py [EXTRA ...] > requirements.txt
    python3 requirements_from_pyproject.py --only EXTRA ...   # the extras without the dependencies
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str], *, base: bool = True) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    own_name = re.sub(r"[-_.]+", "-", project["name"]).lower()
    optional = project.get("optional-dependencies", {})
    found = list(project.get("dependencies", [])) if base else []
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r}")
        found += optional[extra]
    # An extra may name the project itself ("loss-service[test]"): pip installs that part anyway.
    return [
        r
        for r in found
        if re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;]", r)[0]).lower() != own_name
    ]


if __name__ == "__main__":
    here = Path.cwd() / "pyproject.toml"
    if not here.exists():
        here = Path(__file__).resolve().parent.parent / "pyproject.toml"
    args = sys.argv[1:]
    only = "--only" in args
    print("\n".join(requirements(here, [a for a in args if a != "--only"], base=not only)))
