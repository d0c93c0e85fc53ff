"""What the losses call on either kernel module: the CPU one (`cpu`, numba) and the CUDA one
(`cuda`, CuPy). Both implement `SoftmaxKernels`; the constants they share are defined here once.

This module imports nothing but NumPy's typing: importing it compiles and loads nothing.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

# What `softmax_rows` computes from log p_y (`kind`): its `param` is focal's gamma or poly-1's
# epsilon (`label_terms`), unused by cross-entropy, whose target mass comes as vectors.
CROSS_ENTROPY: Final = 0
FOCAL: Final = 1
POLY1: Final = 2

# What the CPU module's `binary_rows` computes (`kind`); the CUDA module has no binary kernels.
BINARY_CROSS_ENTROPY: Final = 0
SIGMOID_FOCAL: Final = 1

# The logits' dtypes the kernels read as they are, and the dtype each computes in (that of the
# gradient and the option vectors): callers widen nothing else first (`_dtypes`, `_rows`).
COMPUTE_DTYPES: Final = {
    "float16": "float32",
    "bfloat16": "float32",
    "float32": "float32",
    "float64": "float64",
}
NATIVE_INPUT_DTYPES: Final = frozenset(COMPUTE_DTYPES)


class SoftmaxKernels(Protocol):
    """A kernel module: the cross-entropy family over rows of class logits, in one pass.

    `softmax_rows(x, y, valid, *, kind, ...)` takes rows `x` [M, C] of a dtype in
    `NATIVE_INPUT_DTYPES` and returns (per_sample [M] float64, lse [M] float64, grad [M, C] in
    the compute dtype, multiplied by `grad_scale`). Where `valid` is False: `per_sample` is 0,
    `lse` is 0 unless `z_loss` > 0, the gradient row is unspecified (the caller zeroes it).
    """

    @property
    def CROSS_ENTROPY(self) -> int: ...
    @property
    def FOCAL(self) -> int: ...
    @property
    def POLY1(self) -> int: ...
    @property
    def COMPUTE_DTYPES(self) -> dict[str, str]: ...
    @property
    def NATIVE_INPUT_DTYPES(self) -> frozenset[str]: ...

    def softmax_rows(
        self,
        x: Any,
        y: Any,
        valid: Any,
        *,
        kind: int,
        at_label: Any = None,
        total: Any = None,
        spread: Any = None,
        z_loss: float = 0.0,
        param: float = 0.0,
        alpha: Any = None,
        grad_scale: float = 1.0,
    ) -> tuple[Any, Any, Any]: ...

    def class_index_rows(
        self,
        x: Any,
        labels: Any,
        ignore_index: int,
        *,
        mean: bool,
        kind: int = 0,  # CROSS_ENTROPY (the class attribute of that name is a property)
        param: float = 0.0,
    ) -> tuple[Any, Any, int, float, float] | None:
        """Plain cross-entropy, focal or poly-1 (`kind`, `param`; class indices; no weight,
        smoothing, z-loss or alpha) in one call:
        (per_sample, grad, valid rows, float64 sum of the losses, gradient scale), or None where
        the general path (`softmax_rows` and the checks around it) must take the call."""
        ...

    def warm_up(self) -> None:
        """Compile the kernels (or load them from a cache) ahead of the first call."""
