"""geosam applies transforms with ``@``: a small run emits none of affine's ``*`` deprecation warnings.

affine 3 warns (PendingDeprecationWarning, a DeprecationWarning later) for ``transform * (x, y)`` and
``transform * other``; the warning names the caller's line, so it would show in users' output.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import pytest
from shapely.geometry import Point, box

import geosam
import geosam.models
from geosam.errors import InvalidRasterError
from geosam.read.scene import Scene
from geosam.testing import OracleMaskGenerator
from tests.data.make_scenes import make_oracle_scene
from tests.test_user_mistakes import oracle_bundle

KW = {"chip_size_px": 128, "overlap_px": 16, "progress": False}


def affine_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    deprecation = (DeprecationWarning, PendingDeprecationWarning)
    return [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
            if issubclass(w.category, deprecation) and ("matmul" in str(w.message) or "multiplication" in str(w.message))]


def test_segment_and_prompt_runs_emit_no_affine_deprecation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_oracle_scene(tmp_path, width=260, height=260, n_objects=12, seed=3)
    with Scene(files.image_path) as sc:
        t, crs = sc.info.transform, sc.info.crs_wkt
    centre = (t.c + 130 * t.a, t.f + 130 * t.e)  # pixel (130, 130), without the operator under test
    prompts = gpd.GeoDataFrame({"id": [1, 2]}, geometry=[Point(centre), box(centre[0] - 20, centre[1] - 20,
                                                                             centre[0] + 20, centre[1] + 20)], crs=crs)
    bundle = oracle_bundle()
    monkeypatch.setattr(geosam.models, "load_model", lambda *a, **k: bundle)
    real = Scene.read_window

    def one_bad_chip(self, window, out_shape=None):  # type: ignore[no-untyped-def]
        if out_shape is None and (window.col_off, window.row_off) == (112, 112):
            raise InvalidRasterError(f"{self.path}: cannot read window {window}")
        return real(self, window, out_shape)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        objects = geosam.segment_scene(files.image_path, OracleMaskGenerator(files.label_path), **KW)
        prompted = geosam.segment_prompts(files.image_path, prompts, model="oracle")
        monkeypatch.setattr(Scene, "read_window", one_bad_chip)  # the failed-chip bookkeeping maps windows too
        partial = geosam.segment_scene(files.image_path, OracleMaskGenerator(files.label_path), skip_bad_chips=True,
                                       **KW)
    assert len(objects) > 0 and len(prompted) == 2 and len(partial) > 0
    assert affine_warnings(caught) == []
