"""The fused kernels of the cross-entropy family: one pass over each row of logits for the loss
and its gradient (see `_engine_path` for when the losses use them).

- `interface`: the `SoftmaxKernels` protocol both kernel modules implement, and the constants
  they share;
- `cpu`: the CPU kernels' Python side (NumPy arrays), built with numba from
  - `numerics`: bit-level helpers, vectorisable `exp` / `log` polynomials, 16-bit widening;
  - `label_terms`: the per-row loss terms of focal and poly-1 (next to the reference formulas);
  - `softmax`: the softmax-row kernels (cross-entropy, focal, poly-1);
  - `binary`: binary cross-entropy and the sigmoid focal loss, element by element;
- `cuda`: the CUDA kernel's Python side (CuPy arrays); its source is `softmax_rows.cu`.

Importing this package imports nothing: numba loads with `cpu`, CuPy only when a CuPy array
reaches `cuda`.
"""
