"""STAC items and searches as scenes: per-band cloud-optimised assets read chip by chip.

Stage modules: `geosam.stac.env` (remote-read settings, signing), `geosam.stac.item`
(an item -> a `geosam.stac.item.StacScene`: bands by common name, one grid),
`geosam.stac.dataset` (window reads through odc-stac), `geosam.stac.search`
(ItemCollections and STAC API searches -> scenes per item, per day, or dated and cloud-masked),
`geosam.stac.fingerprint` (what a journal records of an item), `geosam.stac.describe` (what a scene would
read: grid, bands, asset sizes; ``geosam info``). This package depends on
nothing above `geosam.errors`; ``geosam.read.scene.Scene`` calls `stac_dataset`.
"""

from __future__ import annotations

from typing import Any

from geosam.stac.env import RemoteEnv, load_signer
from geosam.stac.item import StacScene, is_stac, read_item, stac_scene


def stac_dataset(scene: Any) -> Any:
    """A `geosam.stac.dataset.StacDataset` when ``scene`` is a STAC item or scene, else None."""
    if not is_stac(scene):
        return None
    from geosam.stac.dataset import StacDataset

    return StacDataset(stac_scene(scene))


__all__ = ["RemoteEnv", "StacScene", "is_stac", "load_signer", "read_item", "stac_dataset", "stac_scene"]
