"""On the CLI, geosam's own warnings print as one line, ``warning: <message>``, on stderr."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import geopandas as gpd
import pytest
from click.testing import CliRunner

import geosam.models
from geosam.cli.common import handle_errors
from geosam.cli.main import cli
from tests.data.make_scenes import make_oracle_scene
from tests.test_user_mistakes import oracle_bundle, scene_point, write_geojson

CRS = "EPSG:32633"


def print_like_python(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                      line: str | None = None) -> None:
    """What Python does with a shown warning (pytest records them instead): format it, write it to stderr."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """Warnings are shown, every time, the way a plain ``python`` process shows them."""
    monkeypatch.setattr(warnings, "showwarning", print_like_python)
    monkeypatch.setattr(warnings, "filters", [])
    warnings.simplefilter("always")


def test_a_prompt_warning_prints_as_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shown: None) -> None:
    files = make_oracle_scene(tmp_path, crs=CRS, width=128, height=128, n_objects=6, seed=2, name="scene")
    files.image_path.rename(tmp_path / "scene.tif")
    bundle = oracle_bundle()
    monkeypatch.setattr(geosam.models, "load_model", lambda *a, **k: bundle)
    x, y = scene_point(tmp_path)
    src = write_geojson(tmp_path / "p.geojson", [(7, None), (8, {"type": "Point", "coordinates": [x, y]})],
                        crs=CRS)
    res = CliRunner().invoke(cli, ["prompt", str(tmp_path / "scene.tif"), "-o", str(tmp_path / "out.gpkg"),
                                   "--no-progress", "--prompts", str(src)])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if "null or empty" in ln]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("warning: ") and "p.geojson" in lines[0]
    assert "PromptWarning" not in res.stderr and ".py:" not in res.stderr  # no file:line, class, source line
    assert list(gpd.read_file(tmp_path / "out.gpkg")["prompt_id"]) == [8]


def test_other_warnings_hidden_without_v_keep_python_s_format_with_it(shown: None,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from geosam.prompts.parse import PromptWarning

    before = warnings.formatwarning

    @handle_errors
    def command() -> None:
        warnings.warn("from geosam", PromptWarning, stacklevel=1)
        warnings.warn("from elsewhere", UserWarning, stacklevel=1)

    import logging

    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.WARNING)  # no -v: other libraries' warnings go to the debug log (issue 19)
        command()
        err = capsys.readouterr().err
        assert "warning: from geosam\n" in err and "from elsewhere" not in err
        root.setLevel(logging.INFO)  # -v: shown, in Python's format
        command()
        err = capsys.readouterr().err
    finally:
        root.setLevel(level)
    assert "warning: from geosam\n" in err
    assert "UserWarning: from elsewhere" in err and "test_cli_warnings.py:" in err
    assert warnings.formatwarning is before
    warnings.warn("after the command", PromptWarning, stacklevel=1)
    assert "PromptWarning: after the command" in capsys.readouterr().err
