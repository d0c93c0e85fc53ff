"""The per-row loss terms of the fused softmax kernels, as functions of log p_y.

Each is the formula of the reference code (`service/engine/_softmax_family.py`: `focal`,
`poly1`; `_cross_entropy.py` for cross-entropy), written once for the CPU kernels; the CUDA
source (`softmax_rows.cu`, `label_loss`) repeats them line for line. Change them together: the
engine tests compare every path against the reference.

Every function returns (loss, s) with s = -dL/d log p_y: the kernel writes the gradient
`s (softmax(x) - e_y)` of the row from it, as `_softmax_family._finish` does.

- cross-entropy: L = -log p_y, s = 1 (with class weights, label smoothing and the z-loss the
  kernels take the target mass as vectors instead: `softmax.py`);
- focal (Lin et al. 2017): L = -(1 - p)^gamma log p,
  s = (1 - p)^gamma (1 + gamma p (-log p) / (1 - p));
- poly-1 (Leng et al. 2022): L = -log p + epsilon (1 - p), s = 1 + epsilon p.
"""

from __future__ import annotations

import math

from service.engine._kernels.interface import FOCAL
from service.engine._kernels.numerics import compiled


@compiled(fastmath=False, error_model="numpy")
def focal_terms(gamma: float, log_p: float) -> tuple[float, float]:
    p = math.exp(log_p)
    one_minus_p = -math.expm1(log_p)  # exact for p near 1
    modulator = one_minus_p**gamma  # 0^0 = 1
    r = -log_p / one_minus_p if one_minus_p > 0 else 1.0  # -log p / (1 - p) -> 1 at p = 1
    p_r = 0.0 if p == 0 else p * r  # 0 * inf at p = 0: the limit 0
    return modulator * -log_p, modulator * (1 + gamma * p_r)


@compiled(fastmath=False, error_model="numpy")
def poly1_terms(epsilon: float, log_p: float) -> tuple[float, float]:
    return -log_p - epsilon * math.expm1(log_p), 1 + epsilon * math.exp(log_p)


@compiled(fastmath=False, error_model="numpy")
def label_terms(kind: int, param: float, log_p: float) -> tuple[float, float]:
    """(loss, s) of `kind` (FOCAL: `param` is gamma; POLY1: epsilon), the kernels' switch."""
    terms: tuple[float, float] = (
        focal_terms(param, log_p) if kind == FOCAL else poly1_terms(param, log_p)
    )
    return terms
