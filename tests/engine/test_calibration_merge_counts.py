"""Merged calibration states count exactly or not at all: counts near 2^53 wrapped around int64
and came back negative before."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine.calibration import CalibrationState, calibration_state, merge
from service.errors import InvalidInput


def _state_with_count(n: int) -> CalibrationState:
    """A valid one-bin binary state of n samples (all in the one bin, all positive)."""
    base = calibration_state(logits=np.array([2.0]), labels=np.array([1]), n_bins=1)
    data = base.to_dict()
    data.update(n=n, n_correct=n, sum_brier=0.0, sum_nll=0.0)
    data["bins"] = {"count": [n], "sum_confidence": [float(n) * 0.5], "sum_correct": [n]}
    data["classwise"] = None
    return CalibrationState.from_dict(data)


def test_states_whose_counts_add_past_2_to_the_53_are_refused_not_wrapped() -> None:
    near = _state_with_count(2**53 - 1)
    with pytest.raises(InvalidInput, match="more than 2\\^53") as caught:
        merge([near] * 1100)
    assert caught.value.field == ("states",)


def test_counts_up_to_2_to_the_53_merge_exactly() -> None:
    half = _state_with_count(2**52)
    merged = merge([half, half])
    assert merged.n == 2**53
    assert merged.bins.count.tolist() == [2**53]
    assert merged.to_dict()["bins"]["count"] == [2**53]
