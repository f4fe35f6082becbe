"""Smoothing for natural objects (crowns, fields, water): a Gaussian along the outline, in metres.

Each chain of the outline (see `geosam.outline.chains`; an edge shared by two objects is smoothed
once, for both) is resampled every ``sigma_m / 2`` metres, smoothed with a Gaussian of ``sigma_m``
metres along its length (an open chain's ends stay put: mirrored about them), and thinned again with
Douglas-Peucker at ``sigma_m / 20``. An object whose smoothed outline is not valid keeps its chains
unsmoothed (and so do its neighbours' shared edges); every output is valid.
"""

from __future__ import annotations

import math

import numpy as np

from geosam.outline.chains import transform_valid
from geosam.outline.regular import _dp


def _resample(c: np.ndarray, step: float) -> np.ndarray:
    seg = np.hypot(*np.diff(c, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, math.ceil(s[-1] / step) + 1)
    t = np.linspace(0.0, s[-1], n)
    return np.column_stack([np.interp(t, s, c[:, 0]), np.interp(t, s, c[:, 1])])


def smooth_chain(c: np.ndarray, closed: bool, sigma_m: float) -> np.ndarray:
    """One chain smoothed (see the module docstring); an open chain keeps its end points."""
    from scipy.ndimage import gaussian_filter1d

    pts = np.vstack([c, c[:1]]) if closed else c
    if len(pts) < 3 or sigma_m <= 0:
        return c
    r = _resample(pts, sigma_m / 2)
    if closed:
        body = r[:-1]
        if len(body) < 4:
            return c
        sm = gaussian_filter1d(body, 2.0, axis=0, mode="wrap")
        kept = _dp(np.vstack([sm, sm[:1]]), sigma_m / 20)
        out = sm[[k for k in kept if k < len(sm)]]
        return out if len(out) >= 3 else c
    pad = min(len(r) - 1, 8)
    ext = np.vstack([2 * r[0] - r[pad:0:-1], r, 2 * r[-1] - r[-2:-pad - 2:-1]])
    sm = gaussian_filter1d(ext, 2.0, axis=0, mode="nearest")[pad:pad + len(r)]
    sm[0], sm[-1] = c[0], c[-1]
    return sm[_dp(sm, sigma_m / 20)]


def smooth(geoms: np.ndarray, sigma_m: float) -> np.ndarray:
    """Smoothed outlines (metres), neighbours' shared edges smoothed alike, every output valid.

    Args:
        geoms: polygons in metres (others pass through).
        sigma_m: the Gaussian's standard deviation along the outline, metres (0: unchanged).

    Returns:
        The smoothed geometries, aligned with ``geoms``.
    """
    if sigma_m <= 0:
        return np.array(geoms, dtype=object)
    # a failed object's chains stay raw (for its neighbours too)
    return transform_valid(geoms, lambda c, closed, level: smooth_chain(c, closed, sigma_m) if level == 0 else c,
                           "unsmoothed")


__all__ = ["smooth", "smooth_chain"]
