"""Temperature scaling (Guo et al. 2017): the T > 0 minimising the mean NLL of softmax(z / T).

With b = 1 / T, NLL(b) = mean_i [logsumexp(b z_i) - b z_iy] is convex in b: its first derivative
is mean_i (E_p[z_i] - z_iy) and its second mean_i Var_p(z_i) >= 0, p = softmax(b z_i). In
s = log T (b = exp(-s)) the derivative g(s) = -b NLL'(b) therefore changes sign at most once,
from - to +, and the minimiser is its root. We find it by a safeguarded Newton iteration on s:

1. bracket: from s = 0 step outwards (1, 2, 4, ...) until g changes sign, within
   T in [1e-4, 1e4]; a minimum beyond those bounds returns the bound with `converged = False`
   (e.g. separable data, whose NLL keeps falling as T -> 0, until it rounds to exactly 0);
2. Newton steps s - g / g' (g' = b^2 Var + b NLL'), replaced by bisection of the bracket whenever
   a step leaves it or g' <= 0; the bracket shrinks around the sign change at every step;
3. stop when a step or the bracket is below `tol` (1e-8) in log T.

Rows whose label logit is -inf (probability 0 for every T) contribute a constant and are left out
of the fit. SciPy is not a dependency: the tests check this against `scipy.optimize`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.engine._namespace import Array, array_namespace, errstate
from service.engine._softmax import log_softmax

LOG_T_BOUND = math.log(1e4)


@dataclass(frozen=True)
class TemperatureSolution:
    value: float  # T
    converged: bool
    iterations: int


@dataclass(frozen=True)
class _Derivatives:
    g: float  # d NLL / d log T
    h: float  # d^2 NLL / d (log T)^2


def fit_temperature(
    logits: Array, labels: Array, *, tol: float = 1e-8, max_iter: int = 100
) -> TemperatureSolution:
    """T > 0 minimising mean NLL(softmax(logits / T), labels); `logits` [N, K], labels [N]."""
    xp = array_namespace(logits, labels)
    z = scale_logits(logits.astype(np.float64), 1.0)  # rows shifted to max 0: b z cannot overflow
    rows = xp.arange(z.shape[0])
    z_y = z[rows, labels]
    keep = xp.isfinite(z_y)
    if not bool(xp.all(keep)):
        z, labels, z_y = z[keep], labels[keep], z_y[keep]
    if z.shape[0] == 0:
        return TemperatureSolution(1.0, True, 0)
    finite_z = xp.where(xp.isfinite(z), z, 0)  # -inf logits have p = 0: their terms vanish

    def derivatives(s: float) -> _Derivatives:
        b = math.exp(-s)
        p = xp.exp(log_softmax(z * b, axis=-1))
        mean_z = xp.sum(p * finite_z, axis=-1)
        centred = finite_z - mean_z[:, None]
        var = xp.sum(p * centred * centred, axis=-1)
        d1 = float(xp.mean(mean_z - z_y))  # d NLL / d b
        d2 = float(xp.mean(var))  # d^2 NLL / d b^2
        return _Derivatives(g=-b * d1, h=b * b * d2 + b * d1)

    return _solve(derivatives, tol=tol, max_iter=max_iter)


def _solve(
    evaluate: Callable[[float], _Derivatives], *, tol: float, max_iter: int
) -> TemperatureSolution:
    """Root of g = d NLL / d log T, from the derivatives at any s = log T (module docstring)."""
    s = 0.0
    d = evaluate(s)
    iterations = 1
    if d.g == 0:
        return TemperatureSolution(1.0, True, iterations)
    # 1. Bracket the sign change of g: lo has g < 0, hi has g > 0.
    direction = -1.0 if d.g > 0 else 1.0
    step, inner, d_inner = 1.0, s, d
    while True:
        outer = max(-LOG_T_BOUND, min(LOG_T_BOUND, inner + direction * step))
        d_outer = evaluate(outer)
        iterations += 1
        # g == 0 here is a plateau, not a root: every probability has rounded to 0 or 1 (the
        # NLL of separable data as T -> 0), so keep going to the bound.
        if d_outer.g != 0 and (d_outer.g > 0) != (d.g > 0):
            break
        if abs(outer) >= LOG_T_BOUND:  # the minimum lies beyond the bounds
            return TemperatureSolution(math.exp(outer), False, iterations)
        inner, d_inner, step = outer, d_outer, 2 * step
    lo, hi = (inner, outer) if direction > 0 else (outer, inner)
    s, d = (inner, d_inner) if abs(d_inner.g) < abs(d_outer.g) else (outer, d_outer)
    # 2. Safeguarded Newton inside [lo, hi].
    while iterations < max_iter:
        newton = s - d.g / d.h if d.h > 0 else math.nan
        s_new = newton if lo < newton < hi else 0.5 * (lo + hi)
        moved = abs(s_new - s)
        s = s_new
        d = evaluate(s)
        iterations += 1
        if d.g == 0:
            break
        if d.g > 0:
            hi = s
        else:
            lo = s
        if moved < tol or hi - lo < tol:
            break
    else:
        return TemperatureSolution(math.exp(s), False, iterations)
    return TemperatureSolution(math.exp(s), True, iterations)


def scale_logits(logits: Array, temperature: float) -> Array:
    """(logits - row max) / T: the same softmax as logits / T, and no overflow to +inf.

    Every row has a finite maximum (all -inf rows are rejected). A difference that overflows
    becomes -inf, a class of probability 0, as it was to working precision already.
    """
    xp = array_namespace(logits)
    top = xp.max(logits, axis=-1, keepdims=True)
    with errstate(xp, over="ignore"):
        return (logits - top) / logits.dtype.type(temperature)
