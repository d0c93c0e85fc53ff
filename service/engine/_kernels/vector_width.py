"""512-bit vectors for the CPU kernels on the processors LLVM compiles 256-bit ones for.

LLVM compiles for Intel's AVX-512 processors (Skylake-SP to Sapphire Rapids) with 256-bit
vectors unless told otherwise: its `prefer-256-bit` tuning, from the first of them, where a
512-bit instruction lowered the clock of the whole core. The kernels are long loops of
arithmetic, bound by how many elements an instruction holds, and NumPy's `exp`, which the
benchmarks compare them with, is written for 512-bit vectors: with 256-bit ones the kernels ran
at half the width the processor has (docs/performance.md has the measurements).

`full_width_features` is the host's feature string (llvmlite's, as numba reads it) with that
tuning turned off; `request_full_width_vectors` hands it to numba as `NUMBA_CPU_FEATURES`
(numba's documented variable, in the environment and in `numba.config`, where numba reads it
when it sets up its code generator: at the first function `numerics.compiled` decorates, after
this runs). numba keys its cache entries on the features: the two kinds of code never mix. Nothing
changes on a processor without AVX-512 (nor, by the flag, on one whose tuning has no such
preference), where the operator has set numba's own CPU variables (`NUMBA_CPU_NAME`,
`NUMBA_CPU_FEATURES`, `NUMBA_ENABLE_AVX`), or with `LOSS_SERVICE_WIDE_VECTORS=false`. Had numba
compiled something in this process already, its code generator would keep the features it
started with: the stock behaviour, nothing worse.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

import numba
from llvmlite import binding

SWITCH_ENV: Final = "LOSS_SERVICE_WIDE_VECTORS"
FEATURES_ENV: Final = "NUMBA_CPU_FEATURES"
_OPERATOR_CHOICES: Final = ("NUMBA_CPU_NAME", FEATURES_ENV, "NUMBA_ENABLE_AVX")
_NARROW_TUNING: Final = "prefer-256-bit"
_NUMBA_CONFIG: Final[Any] = numba.config  # its variables are set from the environment at run time


def full_width_features(host_features: str, environ: Mapping[str, str]) -> str | None:
    """The feature string for numba where the host (`host_features`, LLVM's `+avx2,-amx,...`)
    has AVX-512 and `environ` leaves the choice to us; None where nothing is to change."""
    if environ.get(SWITCH_ENV, "true").strip().lower() in ("false", "0", "no", "off"):
        return None
    if any(name in environ for name in _OPERATOR_CHOICES):
        return None
    if "+avx512f" not in host_features.split(","):
        return None
    return f"{host_features},-{_NARROW_TUNING}"


def request_full_width_vectors() -> bool:
    """Set `NUMBA_CPU_FEATURES` for 512-bit vectors where `full_width_features` says so (before
    numba sets up its code generator); whether numba will compile with them."""
    try:
        host_features = binding.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot read this host's features: numba's default, "" or none
        return False
    features = full_width_features(host_features, os.environ)
    if features is None:  # unless set so already (earlier in this process, or by its parent)
        return os.environ.get(FEATURES_ENV) == full_width_features(host_features, {})
    # The environment for numba's config reloads (a compile re-reads it once a NUMBA_ variable
    # changes) and for worker processes; `numba.config` for now (read at numba's import).
    os.environ[FEATURES_ENV] = features
    _NUMBA_CONFIG.CPU_FEATURES = features
    return True


def full_width_requested() -> bool:
    """Whether numba was asked for 512-bit vectors (here, or by the operator's own features)."""
    features = _NUMBA_CONFIG.CPU_FEATURES
    return isinstance(features, str) and features.endswith(f",-{_NARROW_TUNING}")
