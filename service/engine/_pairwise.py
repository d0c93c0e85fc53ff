"""Losses on pairs and triplets of scores or embeddings: Bradley-Terry (DPO) and triplet margin.

Bradley-Terry (Bradley & Terry, 1952) with a reference model is DPO (Rafailov et al., "Direct
Preference Optimization", 2023): per pair, with z = beta ((c - r) - (rc - rr)) - margin,

    loss = -log sigmoid(z) = softplus(-z)
    d loss / dc = -beta sigmoid(-z),   d loss / dr = beta sigmoid(-z)

The triplet margin loss (Schroff et al., "FaceNet", 2015) is PyTorch's `triplet_margin_loss`:
d(x1, x2) = ||x1 - x2 + eps||_p and loss = max(d(a, p) - d(a, n) + margin, 0), with `swap`
taking min(d(a, n), d(p, n)) as the negative distance (Balntas et al., 2016).
"""

from __future__ import annotations

import math
from types import ModuleType

from service.engine._binary import softplus_pair
from service.engine._checks import check_option_range, finite_input, first_position, require
from service.engine._dtypes import ComputeDtype, compute_dtype_for
from service.engine._namespace import Array, array_namespace, errstate
from service.engine._reduction import LossResult
from service.errors import InvalidInput


def bradley_terry(
    chosen: Array,
    rejected: Array,
    *,
    beta: float = 1.0,
    margin: float = 0.0,
    ref_chosen: Array | None = None,
    ref_rejected: Array | None = None,
    compute_dtype: ComputeDtype | None = None,
) -> LossResult:
    """`-log sigmoid(beta ((c - r) - (rc - rr)) - margin)` per pair of scores [N].

    A missing reference score is 0, so without both this is the Bradley-Terry reward-model loss
    and with both it is DPO. Gradients are for `chosen` and `rejected`; the references are
    constants. `mean` divides by N.
    """
    xp = array_namespace(chosen, rejected, ref_chosen, ref_rejected)
    check_option_range(beta, "beta", low=0.0, open_low=True)
    check_option_range(margin, "margin", low=-math.inf)
    require(chosen.ndim == 1, "chosen", f"expected scores of shape [N], got {list(chosen.shape)}")
    dtype = compute_dtype_for(chosen.dtype, compute_dtype)
    c = finite_input(chosen, "chosen", chosen.shape, dtype, xp=xp)
    r = finite_input(rejected, "rejected", chosen.shape, dtype, xp=xp)
    with errstate(xp, over="ignore", invalid="ignore"):  # checked just below
        diff = c - r
        if ref_chosen is not None or ref_rejected is not None:
            rc, rr = (
                0 if ref is None else finite_input(ref, field, chosen.shape, dtype, xp=xp)
                for field, ref in (("ref_chosen", ref_chosen), ("ref_rejected", ref_rejected))
            )
            diff = diff - (rc - rr)
        z = beta * diff - margin
    _reject_overflow(z, "beta", "beta * (score difference) - margin", xp=xp)
    softplus, softplus_neg = softplus_pair(z, xp=xp)
    # d/dz softplus(-z) = -sigmoid(-z) = -exp(-softplus(z)), never 1 - sigmoid(z)
    d_z = -xp.exp(-softplus)
    grad = beta * d_z
    n = chosen.shape[0]
    return LossResult(
        per_sample=softplus_neg,
        grads={"chosen": grad, "rejected": -grad},
        n_valid=n,
        divisor=float(n),
    )


def triplet_margin(
    anchor: Array,
    positive: Array,
    negative: Array,
    *,
    margin: float = 1.0,
    p: float = 2.0,
    eps: float = 1e-6,
    swap: bool = False,
    compute_dtype: ComputeDtype | None = None,
) -> LossResult:
    """PyTorch's `triplet_margin_loss` on embeddings [N, D]; gradients for all three inputs.

    As in PyTorch, `margin` must be > 0, the hinge passes its gradient at exactly 0 (clamp_min's
    backward), a zero distance has gradient 0, and a tie under `swap` splits the gradient evenly
    between d(a, n) and d(p, n) (as `minimum`'s backward does). `p` is a finite norm order >= 1.
    """
    xp = array_namespace(anchor, positive, negative)
    check_option_range(margin, "margin", low=0.0, open_low=True)
    check_option_range(p, "p", low=1.0)
    check_option_range(eps, "eps", low=0.0)
    require(
        anchor.ndim == 2 and anchor.shape[1] >= 1,
        "anchor",
        f"expected embeddings of shape [N, D] with D >= 1, got {list(anchor.shape)}",
    )
    dtype = compute_dtype_for(anchor.dtype, compute_dtype)
    a, pos, neg = (
        finite_input(array, field, anchor.shape, dtype, xp=xp)
        for field, array in (("anchor", anchor), ("positive", positive), ("negative", negative))
    )
    d_ap, g_ap = _distance(a, pos, p, eps, xp=xp)
    d_an, g_an = _distance(a, neg, p, eps, xp=xp)
    d_neg = d_an
    if swap:
        d_pn, g_pn = _distance(pos, neg, p, eps, xp=xp)
        d_neg = xp.minimum(d_an, d_pn)
        # the gradient goes to the smaller distance, half to each on a tie
        w_an = xp.where(d_an < d_pn, 1.0, xp.where(d_an == d_pn, 0.5, 0.0)).astype(dtype)
        w_pn = 1 - w_an
    hinge = margin + d_ap - d_neg
    _reject_overflow(hinge, "anchor", "a distance", xp=xp)
    active = (hinge >= 0).astype(dtype)[:, None]  # clamp_min(h, 0)' = [h >= 0] in PyTorch
    # d/da = g(a, p) - g(a, n); d/dp = -g(a, p); d/dn = g(a, n), with the swap's share of g(p, n)
    if swap:
        g_an = g_an * w_an[:, None]
        g_pn = g_pn * w_pn[:, None]
        grads = {"anchor": g_ap - g_an, "positive": -g_ap - g_pn, "negative": g_an + g_pn}
    else:
        grads = {"anchor": g_ap - g_an, "positive": -g_ap, "negative": g_an}
    n = anchor.shape[0]
    return LossResult(
        per_sample=xp.maximum(hinge, 0),
        grads={name: grad * active for name, grad in grads.items()},
        n_valid=n,
        divisor=float(n),
    )


def vector_norm(d: Array, p: float, *, xp: ModuleType) -> Array:
    """`||d||_p` of each row of `d` [N, D], scaled by the row's max |d| so it never overflows."""
    magnitude = xp.abs(d)
    if p == 1:
        return xp.sum(magnitude, axis=-1)
    largest = xp.max(magnitude, axis=-1, keepdims=True)
    scale = xp.where(largest > 0, largest, 1)
    return scale[:, 0] * xp.sum((magnitude / scale) ** p, axis=-1) ** (1 / p)


def _distance(x1: Array, x2: Array, p: float, eps: float, *, xp: ModuleType) -> tuple[Array, Array]:
    """`||x1 - x2 + eps||_p` per row and its gradient with respect to x1 (the negative for x2).

    d/dd_k ||d||_p = sign(d_k) (|d_k| / ||d||_p)^(p - 1), written as a ratio in [0, 1] so that
    |d_k|^(p - 1) never overflows; 0 where the norm is 0, and sign(0) = 0 for p = 1, as PyTorch.
    """
    with errstate(xp, over="ignore", invalid="ignore"):  # an overflow is rejected by the caller
        d = x1 - x2 + eps
        norm = vector_norm(d, p, xp=xp)
        safe = xp.where(norm > 0, norm, 1)[:, None]
        ratio = xp.abs(d) / safe
        grad = xp.sign(d) if p == 1 else xp.sign(d) * ratio ** (p - 1)
    return norm, xp.where(norm[:, None] > 0, grad, 0)


def _reject_overflow(value: Array, field: str, what: str, *, xp: ModuleType) -> None:
    bad = ~xp.isfinite(value)
    if bool(xp.any(bad)):
        raise InvalidInput(
            f"{field}: {what} overflows {value.dtype} at index {first_position(bad, xp)}",
            field=field,
        )
