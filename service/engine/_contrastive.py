"""InfoNCE (van den Oord et al., "Representation Learning with Contrastive Predictive Coding",
2018; the NT-Xent form of SimCLR, Chen et al. 2020 when `normalize`): cross-entropy over the
similarities of each query with every key.

With q^ = q / |q| and k^ = k / |k| (or q and k themselves without `normalize`),

    S = q^ k^T / T,   loss_i = cross_entropy(S_i, label_i)

and, from G = d sum(loss) / dS (cross-entropy's gradient, softmax(S) - onehot per valid row),

    dL/dq^ = G k^ / T,   dL/dk^ = G^T q^ / T,   dL/dq = (g - q^ (q^ . g)) / |q| for g = dL/dq^

the last being the Jacobian of q / |q| (the same for each key row).
"""

from __future__ import annotations

from types import ModuleType

from service.engine._checks import check_option_range, finite_input, first_position, require
from service.engine._cross_entropy import cross_entropy
from service.engine._dtypes import ComputeDtype, compute_dtype_for
from service.engine._namespace import Array, array_namespace, errstate
from service.engine._pairwise import vector_norm
from service.engine._reduction import LossResult
from service.errors import InvalidInput


def info_nce(
    query: Array,
    keys: Array,
    labels: Array,
    *,
    temperature: float = 0.07,
    normalize: bool = True,
    ignore_index: int = -100,
    compute_dtype: ComputeDtype | None = None,
) -> LossResult:
    """InfoNCE of `query` [N, D] against `keys` [M, D]; `labels` [N] index each positive key.

    A label equal to `ignore_index` drops its query (loss 0, no gradient, and a zero query row
    is then allowed); `mean` divides by the number of the others. With `normalize`, every key
    and every counted query needs a non-zero norm. The query's dtype sets the compute dtype.
    """
    xp = array_namespace(query, keys, labels)
    check_option_range(temperature, "temperature", low=0.0, open_low=True)
    require(
        query.ndim == 2 and query.shape[1] >= 1,
        "query",
        f"expected shape [N, D] with D >= 1, got {list(query.shape)}",
    )
    n, dim = query.shape
    require(
        keys.ndim == 2 and keys.shape[1] == dim and keys.shape[0] >= 1,
        "keys",
        f"expected shape [M, {dim}] with M >= 1, got {list(keys.shape)}",
    )
    require(labels.shape == (n,), "labels", f"expected shape [{n}], got {list(labels.shape)}")
    dtype = compute_dtype_for(query.dtype, compute_dtype)
    q = finite_input(query, "query", query.shape, dtype, xp=xp)
    k = finite_input(keys, "keys", keys.shape, dtype, xp=xp)
    q_norm = k_norm = None
    if normalize:
        q_norm = _nonzero_norms(q, "query", labels != ignore_index, xp=xp)
        k_norm = _nonzero_norms(k, "keys", None, xp=xp)
        q = q / q_norm[:, None]
        k = k / k_norm[:, None]
    t = dtype.type(temperature)
    with errstate(xp, over="ignore", invalid="ignore"):  # checked just below
        similarity = (q @ k.T) / t
    bad = ~xp.isfinite(similarity)
    if bool(xp.any(bad)):
        raise InvalidInput(
            f"query: query @ keys.T / temperature overflows {dtype.name} at index "
            f"{first_position(bad, xp)}",
            field="query",
        )
    result = cross_entropy(similarity, labels, ignore_index=ignore_index)
    g = result.grads["logits"] / t  # d sum(loss) / dS, times dS / d(q^ k^T) = 1 / T
    d_q = g @ k  # dL/dq^ = G k^ / T
    d_k = g.T @ q  # dL/dk^ = G^T q^ / T
    if q_norm is not None and k_norm is not None:
        d_q = _through_normalization(d_q, q, q_norm, xp=xp)
        d_k = _through_normalization(d_k, k, k_norm, xp=xp)
    return LossResult(
        per_sample=result.per_sample,
        grads={"query": d_q, "keys": d_k},
        n_valid=result.n_valid,
        divisor=result.divisor,
    )


def _nonzero_norms(x: Array, field: str, counted: Array | None, *, xp: ModuleType) -> Array:
    """L2 norm of each row; 0 is an error for a counted row and replaced by 1 for the others."""
    norm = vector_norm(x, 2.0, xp=xp)
    zero = norm == 0 if counted is None else (norm == 0) & counted
    if bool(xp.any(zero)):
        row = first_position(zero, xp)[0]
        raise InvalidInput(
            f"{field}: row {row} has norm 0 and cannot be normalized (normalize=true)",
            field=field,
        )
    return xp.where(norm > 0, norm, 1)


def _through_normalization(g: Array, unit: Array, norm: Array, *, xp: ModuleType) -> Array:
    """d/dx of L(x / |x|) from g = dL/dx^: (g - x^ (x^ . g)) / |x|, row by row."""
    along = xp.sum(unit * g, axis=-1, keepdims=True)
    return (g - unit * along) / norm[:, None]
