"""Fixtures of the STAC tests: the generated catalog (`tests.data.make_stac`), served with its STAC API
(`geosam.stac.local.LocalCatalog`).

Each test gets its own server (a new port, so GDAL's in-process cache of another test's URLs
never hides a read). ``ThresholdGenerator``: masks from the chip's pixels (bright connected
regions), so two runs give the same polygons only when they read the same pixels.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from scipy import ndimage

from geosam.read.scene import Chip
from geosam.segment.base import BaseMaskGenerator, ChipMasks
from geosam.stac.local import LocalCatalog
from tests.data.make_stac import StacFiles, make_catalog


@pytest.fixture(scope="session")
def stac_catalog(tmp_path_factory: pytest.TempPathFactory) -> StacFiles:
    return make_catalog(tmp_path_factory.mktemp("stac") / "www")


@pytest.fixture()
def stac_served(stac_catalog: StacFiles) -> Iterator[LocalCatalog]:
    with LocalCatalog(stac_catalog.root, lifetime_s=300) as srv:
        yield srv


def item_url(srv: LocalCatalog, files: StacFiles, k: int = 0) -> str:
    return f"{srv.url}/{files.items[k].relative_to(files.root).as_posix()}"


class ThresholdGenerator(BaseMaskGenerator):
    """One mask per 4-connected bright region (mean of the model image > 140, valid pixels, >= 12 px)."""

    name = "threshold"

    def generate(self, chip: Chip) -> ChipMasks:
        labels, n = ndimage.label((chip.image.mean(axis=2) > 140) & chip.valid)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = [k for k in range(1, n + 1) if sizes[k] >= 12]
        if not keep:
            return ChipMasks.empty(chip.height, chip.width)
        masks = np.stack([labels == k for k in keep])
        ones = np.ones(len(keep), dtype=np.float32)
        return ChipMasks(masks, ones, ones.copy())


def geometries(gdf) -> list[bytes]:
    return sorted(g.normalize().wkb for g in gdf.geometry)
