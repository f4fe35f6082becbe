"""A STAC item on Dask: the workers read the item's assets themselves (the scene travels as a picklable
`StacScene`) and give the in-process output."""

from __future__ import annotations

import pytest

import geosam
from tests._stac_fixtures import ThresholdGenerator, geometries, item_url


@pytest.mark.slow
def test_an_item_on_two_workers_gives_the_in_process_output(stac_catalog, stac_served, dask_client) -> None:
    srv = stac_served
    kw = {"chip_size_px": 192, "overlap_px": 32, "progress": False, "overview_max_px": 2048}
    here = geosam.segment_scene(item_url(srv, stac_catalog), ThresholdGenerator(), **kw)
    srv.reset()
    there = geosam.segment_scene(item_url(srv, stac_catalog), ThresholdGenerator(), scheduler=dask_client, **kw)
    assert len(here) > 10 and geometries(there) == geometries(here)
    assert srv.bytes_sent > 0  # the workers fetched the chips
