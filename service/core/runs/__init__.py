"""Evaluation runs: a dataset's losses and calibration, accumulated over many batches, exactly.

A run keeps sums, never samples (`statistics`): per loss the float64 sum of the per-sample losses,
the divisor of `mean` and `n_valid`; for calibration the mergeable state (bins, counts, sums).
Each batch adds its sums in one transaction of the store (`service.db`), under its client's
idempotency key, so that its report is the report of the concatenation of its batches, in any
order, from any number of replicas. `models` are the wire bodies, `usecases` what the adapters
call.
"""
