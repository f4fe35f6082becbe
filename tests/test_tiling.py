"""Chip grid: coverage, cores partition the scene, edge policy, validation."""

import itertools

import numpy as np
import pytest
from affine import Affine

from geosam.errors import ConfigError
from geosam.tile.grid import chip_grid, iter_chip_specs
from geosam.windows import PixelWindow


@pytest.mark.parametrize(
    "width,height,chip,overlap",
    [(1000, 700, 256, 32), (256, 256, 256, 32), (257, 900, 256, 64), (500, 300, 256, 0), (100, 60, 256, 32),
     (4000, 3000, 1024, 128), (513, 513, 128, 63)],
)
def test_cores_partition_scene_and_windows_cover(width, height, chip, overlap):
    grid = chip_grid(width, height, chip, overlap)
    owner = np.zeros((height, width), dtype=np.int32)
    covered = np.zeros((height, width), dtype=bool)
    for _, _, win, core in grid:
        assert win.col_off >= 0 and win.row_off >= 0 and win.col_end <= width and win.row_end <= height
        # full-size chips unless the scene is smaller than one chip (shifted inward, never padded)
        assert win.width == min(chip, width) and win.height == min(chip, height)
        assert core.intersection(win) == core  # core inside its window
        owner[core.slices()] += 1
        covered[win.slices()] = True
    assert (owner == 1).all()
    assert covered.all()


def test_neighbour_overlap_is_at_least_overlap_px():
    grid = chip_grid(1000, 1000, 256, 48)
    xs = sorted({w.col_off for _, _, w, _ in grid})
    for a, b in itertools.pairwise(xs):
        assert a + 256 - b >= 48


def test_scene_smaller_than_chip_is_one_chip():
    grid = chip_grid(100, 60, 256, 32)
    assert len(grid) == 1
    assert grid[0][2] == PixelWindow(0, 0, 100, 60) == grid[0][3]


@pytest.mark.parametrize("chip,overlap", [(8, 0), (256, 128), (256, -1)])
def test_bad_grid_settings(chip, overlap):
    with pytest.raises(ConfigError):
        chip_grid(1000, 1000, chip, overlap)


def test_chip_transform_places_chip_pixels_in_scene():
    tr = Affine(0.5, 0, 500000, 0, -0.5, 5000000)
    specs = list(iter_chip_specs("x.tif", 700, 500, tr, "WKT", 256, 32))
    for s in specs:
        x, y = s.transform @ (0, 0)
        assert (x, y) == tr @ (s.window.col_off, s.window.row_off)
        assert s.chip_id == f"r{s.row}c{s.col}"
    # specs are hashable and picklable (they travel to workers)
    import pickle

    assert pickle.loads(pickle.dumps(specs[3])) == specs[3]
    assert len({*specs}) == len(specs)


def test_edges_inside_scene():
    specs = list(iter_chip_specs("x.tif", 700, 500, Affine.identity(), "WKT", 256, 32))
    first, last = specs[0], specs[-1]
    assert first.edges_inside_scene() == (False, False, True, True)
    assert last.edges_inside_scene() == (True, True, False, False)
