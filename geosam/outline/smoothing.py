"""Smoothing for natural objects (crowns, fields, water): a Gaussian along the outline, in metres.

Each chain of the outline (see `geosam.outline.chains`; an edge shared by two objects is smoothed
once, for both) is resampled every ``sigma_m / 2`` metres, smoothed with a Gaussian of ``sigma_m``
metres along its length (an open chain's ends stay put: mirrored about them), and thinned again with
Douglas-Peucker at ``sigma_m / 20``. An object whose smoothed outline is not valid keeps its chains
unsmoothed (and so do its neighbours' shared edges); every output is valid.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import shapely

from geosam.outline.chains import cut, keys_of, rebuild
from geosam.outline.coverage import _polygonal
from geosam.outline.regular import _dp

log = logging.getLogger(__name__)


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
    out = np.array(geoms, dtype=object)
    idx = _polygonal(out)
    if sigma_m <= 0 or not len(idx):
        return out
    rings, chains = cut(out, idx)
    done = {k: smooth_chain(c, closed, sigma_m) for k, (c, closed) in chains.items()}
    for _ in range(4):
        new = rebuild(rings, done, out, idx)
        ok = shapely.is_valid(new) & ~shapely.is_empty(new)
        if ok.all():
            break
        # the chains of the objects that failed stay raw (for their neighbours too), then try again
        for k in keys_of(rings, set(idx[~ok].tolist())):
            done[k] = chains[k][0]
    if not ok.all():
        log.debug("%d outlines kept unsmoothed (their smoothed outline was not valid)", int((~ok).sum()))
    out[idx[ok]] = new[ok]
    return out


__all__ = ["smooth", "smooth_chain"]
