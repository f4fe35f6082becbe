"""One rule for scene sources (paths, patterns, @lists) in every command (`geosam.read.sources`)."""

from __future__ import annotations

import os

import pytest

from geosam.errors import ConfigError
from geosam.read.sources import expand_sources


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_lists_resolve_beside_themselves_then_as_written(tmp_path, monkeypatch) -> None:
    data = tmp_path / "data"
    a, b = _touch(data / "a.tif"), _touch(data / "b.tif")
    elsewhere = _touch(tmp_path / "cwd" / "c.tif")
    listing = data / "dates.txt"
    listing.write_text("# two dates and one beside the working folder\na.tif\n\n*b.tif\nc.tif\n"
                       "/vsicurl/https://example.com/x.tif\n")
    monkeypatch.chdir(tmp_path / "cwd")  # the list is used from another folder
    got = expand_sources([f"@{listing}"], must_exist=True)
    assert got == [str(a), str(b), "c.tif", "/vsicurl/https://example.com/x.tif"]
    assert os.path.samefile(got[2], elsewhere)


def test_patterns_sort_and_duplicates_drop_unless_kept(tmp_path) -> None:
    b, a = _touch(tmp_path / "b.tif"), _touch(tmp_path / "a.tif")
    assert expand_sources([str(tmp_path / "*.tif"), str(a)]) == [str(a), str(b)]
    assert expand_sources([str(tmp_path / "*.tif"), str(a)], unique=False) == [str(a), str(b), str(a)]
    scene = object()  # a scene that is not a path (a STAC scene) is kept as given
    assert expand_sources([scene, "https://example.com/[1].tif"]) == [scene, "https://example.com/[1].tif"]


def test_bad_sources_are_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"\*\.jp2: no date scene matches this pattern"):
        expand_sources([str(tmp_path / "*.jp2")], what="date scene")
    with pytest.raises(ConfigError, match="list file .*missing.txt does not exist"):
        expand_sources([f"@{tmp_path / 'missing.txt'}"])
    with pytest.raises(ConfigError, match="gone.tif: no such file"):
        expand_sources([str(tmp_path / "gone.tif")], must_exist=True)
    assert expand_sources([str(tmp_path / "gone.tif")]) == [str(tmp_path / "gone.tif")]  # segment reports it later
