"""Smooth ECE (Blasiok & Nakkiran 2023, "Smooth ECE: principled reliability diagrams via kernel
smoothing"), with the discretisation of the authors' reference implementation, `relplot`.

At bandwidth sigma, the residuals r_i = f_i - y_i (f the confidence, y the outcome) and the
sample density are smoothed with a Gaussian kernel reflected at 0 and 1, and

    smECE_sigma = sum_t |r_hat(t)| dens(t) / sum_t dens(t)

over an evaluation mesh t of max(200, round(10 / sigma)) points, with r_hat = smoothed residual
/ (smoothed density + 1e-4). As in relplot, samples are first spread linearly onto a grid of
M = max(2000, round(20 / sigma)) // 2 + 1 points, the kernel is sampled on the same grid, and the
smoothed values are interpolated linearly onto the mesh.

Bandwidth rule: sigma* is the fixed point smECE_sigma* = sigma* (smECE_sigma falls as sigma grows,
so there is one), searched in [0.001, 1] as relplot does. relplot stops after ten halvings and
returns the upper end of its last bracket (sigma* to within 2^-10); we bisect until the bracket is
below `BANDWIDTH_TOL` and return its upper end. Not mergeable: the kernel needs every sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.engine._namespace import Array, array_namespace
from service.engine.calibration._bins import to_host

SIGMA_MIN = 1e-3  # relplot's `eps`: bandwidths below it count as fixed points
BANDWIDTH_TOL = 1e-7
DENSITY_EPS = 1e-4  # relplot's regulariser of the density


@dataclass(frozen=True)
class SmoothEce:
    value: float
    bandwidth: float


class _Smoother:
    """smECE at any bandwidth for one sample; grids are cached per grid size."""

    def __init__(self, confidence: Array, outcome: Array) -> None:
        self.xp = array_namespace(confidence)
        self.f = confidence.astype(np.float64)
        self.r = self.f - outcome.astype(np.float64)
        self.grids: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def grid(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Residuals and counts spread linearly onto m grid points (relplot's rounding)."""
        if m not in self.grids:
            xp = self.xp
            scaled = self.f * (m - 1)
            cell = xp.clip(scaled.astype(np.int64), 0, m - 2)
            frac = scaled - cell
            left, right = 1 - frac, frac

            def spread(weight: Array) -> np.ndarray:
                lo = xp.bincount(cell, weights=left * weight, minlength=m)
                hi = xp.bincount(cell + 1, weights=right * weight, minlength=m)
                return to_host(lo + hi)

            self.grids[m] = (spread(self.r), spread(xp.ones_like(self.f)))
        return self.grids[m]

    def at(self, sigma: float) -> float:
        m = max(2000, round(20 / sigma)) // 2 + 1
        residual, density = self.grid(m)
        kernel = _kernel(sigma, m)
        mesh = np.linspace(0, 1, max(round(10 / sigma), 200))
        r_hat = _interpolate(mesh, _reflected_convolution(residual, kernel))
        dens = _interpolate(mesh, _reflected_convolution(density, kernel)) + DENSITY_EPS
        return float(np.sum(np.abs(r_hat / dens) * dens) / np.sum(dens))


def smooth_ece(confidence: Array, outcome: Array) -> SmoothEce | None:
    """smECE at the fixed-point bandwidth; None for an empty sample."""
    if confidence.shape[0] == 0:
        return None
    smoother = _Smoother(confidence, outcome)
    lo, hi = SIGMA_MIN, 1.0
    value_hi = smoother.at(hi)
    if value_hi > hi:  # cannot happen for confidences in [0, 1], kept for relplot's parity
        return SmoothEce(value_hi, hi)
    value_lo = smoother.at(lo)
    if value_lo <= lo:
        return SmoothEce(value_lo, lo)
    while hi - lo > BANDWIDTH_TOL:
        mid = 0.5 * (lo + hi)
        value = smoother.at(mid)
        if value > mid:
            lo = mid
        else:
            hi, value_hi = mid, value
    return SmoothEce(value_hi, hi)


def smooth_ece_at(confidence: Array, outcome: Array, sigma: float) -> float:
    """smECE at a fixed bandwidth (relplot's `smECE_sigma`)."""
    return _Smoother(confidence, outcome).at(sigma)


def _kernel(sigma: float, m: int) -> np.ndarray:
    """The Gaussian density sampled on m points of [0, 1], centred at 0.5 (as relplot)."""
    t = np.linspace(0, 1, m)
    return np.exp(-(t - 0.5) * (t - 0.5) / (2 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)


def _reflected_convolution(values: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolution with the values mirrored at both ends of the grid (boundary reflection).

    `np.convolve(..., "valid")` of the mirrored sequence, computed with a real FFT: the mirrored
    sequence has 3m - 2 points, so a direct convolution would cost O(m^2) per bandwidth.
    """
    m = values.shape[0]
    extended = np.concatenate([values[::-1][:-1], values, values[::-1][1:]])
    size = extended.shape[0] + m - 1
    full = np.fft.irfft(np.fft.rfft(extended, size) * np.fft.rfft(kernel, size), size)
    valid = full[m - 1 : extended.shape[0]]
    return valid[m // 2 : m // 2 + m]


def _interpolate(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Linear interpolation of the points (i / (len(y) - 1), y[i]) at t (relplot's indexing)."""
    last = y.shape[0] - 1
    step = 1 / last
    index = np.clip((t * last).astype(np.int64), 0, last - 1)
    residual = (t - index * step) / step
    out: np.ndarray = y[index] * (1 - residual) + y[index + 1] * residual
    return out
