"""The kernels' vector width: 512-bit vectors asked of numba on AVX-512 processors, unless the
operator chose otherwise (`_kernels.vector_width`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from llvmlite import binding

from service.engine._kernels.vector_width import FEATURES_ENV, SWITCH_ENV, full_width_features

AVX512_HOST = "+sse2,+avx,+avx2,+fma,+avx512f,+avx512bw,-amx-tile"
AVX2_HOST = "+sse2,+avx,+avx2,+fma,-avx512f,-avx512bw,-amx-tile"


def test_an_avx512_host_gets_its_features_without_the_256_bit_preference() -> None:
    assert full_width_features(AVX512_HOST, {}) == AVX512_HOST + ",-prefer-256-bit"


def test_a_host_without_avx512_is_left_alone() -> None:
    assert full_width_features(AVX2_HOST, {}) is None
    assert full_width_features("+avx512bw,-avx512f", {}) is None  # the foundation is what counts
    assert full_width_features("", {}) is None  # LLVM read no features


@pytest.mark.parametrize("name", ["NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_ENABLE_AVX"])
def test_the_operators_numba_cpu_variables_win(name: str) -> None:
    assert full_width_features(AVX512_HOST, {name: "x"}) is None


@pytest.mark.parametrize("value", ["false", "0", "FALSE", " off "])
def test_the_switch_turns_it_off(value: str) -> None:
    assert full_width_features(AVX512_HOST, {SWITCH_ENV: value}) is None
    assert full_width_features(AVX512_HOST, {SWITCH_ENV: "true"}) is not None


# In a fresh process (numba's code generator is set up once per process): what numba was asked
# for, and the instructions of a float32 loop it then compiles.
_PROBE = """
import json, os, numpy as np
import service.engine._kernels.numerics as numerics
import numba
@numba.njit(cache=False, fastmath=True)
def twice_plus_one(x, y):
    for i in range(x.shape[0]):
        y[i] = x[i] * np.float32(2) + np.float32(1)
x = np.ones(4096, np.float32)
twice_plus_one(x, np.empty_like(x))
asm = twice_plus_one.inspect_asm(twice_plus_one.signatures[0])
fmas = [line for line in asm.splitlines() if "vfmadd" in line and "ps\\t" in line]
print(json.dumps({"features": os.environ.get("NUMBA_CPU_FEATURES"),
                  "config": numba.config.CPU_FEATURES,
                  "zmm": any("zmm" in line for line in fmas)}))
"""


def _probe(**environ: str) -> dict[str, object]:
    chosen = (SWITCH_ENV, FEATURES_ENV, "NUMBA_CPU_NAME", "NUMBA_ENABLE_AVX")
    env = {k: v for k, v in os.environ.items() if k not in chosen} | environ
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, env=env
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


_HOST_FEATURES = binding.get_host_cpu_features().flatten()


@pytest.mark.skipif("+avx512f" not in _HOST_FEATURES.split(","), reason="no AVX-512 here")
def test_on_this_avx512_host_the_kernels_compile_to_512_bit_vectors() -> None:
    wide = _probe()
    assert wide["features"] == wide["config"] == _HOST_FEATURES + ",-prefer-256-bit"
    assert wide["zmm"] is True
    stock = _probe(**{SWITCH_ENV: "false"})
    assert stock["features"] is None and stock["config"] is None


@pytest.mark.skipif("+avx512f" in _HOST_FEATURES.split(","), reason="AVX-512 here")
def test_on_this_host_without_avx512_numba_keeps_its_defaults() -> None:
    probe = _probe()
    assert probe["features"] is None and probe["config"] is None
    assert probe["zmm"] is False
