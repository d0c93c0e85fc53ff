"""Calibration statistics: update -> merge -> compute, and what needs the samples themselves.

    scores, labels --predictions/samples--> per-sample quantities (never stored)
        --update--> CalibrationState (fixed-size sums, versioned, `to_dict` / `from_dict`)
        --merge--> CalibrationState of the union (addition, after compatibility checks)
        --compute--> CalibrationMetrics (pure, on the host)

    per-sample quantities --> fit_temperature, bootstrap, smooth_ece (not mergeable)

`calibration_report` runs the whole chain for one batch; `merge_report` merges shard states and
computes. Like the rest of the engine, nothing here imports FastAPI, pydantic or CuPy; arrays may
be NumPy or CuPy, states are NumPy.
"""

from service.engine.calibration._bins import BINNINGS, Binning, quantile_edges, uniform_edges
from service.engine.calibration._bootstrap import BootstrapIntervals, Interval
from service.engine.calibration._inputs import (
    NLL_CAP,
    Predictions,
    Samples,
    Task,
    predictions,
    samples,
)
from service.engine.calibration._metrics import BinSummary, CalibrationMetrics, compute
from service.engine.calibration._report import (
    CalibrationReport,
    TemperatureFit,
    calibration_report,
    calibration_state,
    merge_report,
)
from service.engine.calibration._smooth import SmoothEce, smooth_ece, smooth_ece_at
from service.engine.calibration._state import (
    MAX_CLASSWISE_CELLS,
    STATE_VERSION,
    BinSums,
    CalibrationState,
)
from service.engine.calibration._temperature import TemperatureSolution, fit_temperature
from service.engine.calibration._update import merge, update

__all__ = [
    "BINNINGS",
    "MAX_CLASSWISE_CELLS",
    "NLL_CAP",
    "STATE_VERSION",
    "BinSummary",
    "BinSums",
    "Binning",
    "BootstrapIntervals",
    "CalibrationMetrics",
    "CalibrationReport",
    "CalibrationState",
    "Interval",
    "Predictions",
    "Samples",
    "SmoothEce",
    "Task",
    "TemperatureFit",
    "TemperatureSolution",
    "calibration_report",
    "calibration_state",
    "compute",
    "fit_temperature",
    "merge",
    "merge_report",
    "predictions",
    "quantile_edges",
    "samples",
    "smooth_ece",
    "smooth_ece_at",
    "uniform_edges",
    "update",
]
