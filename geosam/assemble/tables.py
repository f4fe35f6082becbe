"""Where a run's finished objects go and the output table they become: the `Table` protocol.

The runner (`geosam.modes.runner.run_mode`) hands every batch of finished objects
(`geosam.assemble.records.Record` values, map coordinates) to its mode's table with ``add``
and, when the run ends, reads the output table back with ``frames``, in batches, whether the
batches then become one GeoDataFrame or are streamed into a file. Segment-everything and text
mode use `ObjectTable` (objects wait on disk, `geosam.assemble.store.ObjectStore`); prompt mode
has a table of one row per prompt (`PromptTable`, built by `prompts_frame`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from geosam.assemble.records import Record, geo_frame
from geosam.assemble.store import OBJECT_COLUMNS, ObjectStore
from geosam.config.outline import OutlineConfig
from geosam.prompts.parse import OUTPUT_COLUMNS, Prompt, report_statuses

if TYPE_CHECKING:
    import geopandas as gpd


class Table(Protocol):
    """A mode's output table while its run fills it.

    Attributes:
        geometry_types: Every geometry type added so far (declares a written layer's type).
        n_objects: Objects in the table (known once ``frames`` has been read to the end).
    """

    @property
    def geometry_types(self) -> set[str]: ...

    @property
    def n_objects(self) -> int: ...

    def add(self, records: Sequence[Record]) -> None:
        """Keep finished objects (the run loop's sink)."""
        ...

    def details(self) -> dict[str, Any]:
        """The mode's own figures for the run summary, once every chip is in (may warn or raise)."""
        ...

    def frames(self, complete: bool) -> Iterator[gpd.GeoDataFrame]:
        """The output table in order, in batches (at least one, maybe empty).

        Args:
            complete: Whether the ``complete`` column is kept (a chip failed, see `geosam.write.failed_chips`).
        """
        ...

    def close(self) -> None:
        """Release what the table holds (temporary files)."""
        ...


@dataclass(frozen=True)
class ObjectTableSpec:
    """How a per-object table is built (segment-everything and text mode).

    Attributes:
        lead: The leading columns, in order (see `geosam.assemble.store.LEAD_COLUMNS`).
        min_area_m2: Objects smaller than this (m2) are dropped.
        min_index: ``(index, threshold)`` pairs: objects whose ``<index>_mean`` is below are dropped.
        rank_by: Sort by this column, highest first, and add ``rank``; None keeps the spatial order.
        top_k: Keep at most this many rows (after ``rank_by``).
        require: Attribute columns present in every table (NaN where missing), e.g. index statistics.
        to_crs: Reproject the table to this CRS (valid, split at the antimeridian); None keeps the scene's.
        outline: How the outlines are refined, batch by batch (`geosam.outline`); None leaves them as traced.
    """

    lead: tuple[str, ...] = OBJECT_COLUMNS
    min_area_m2: float = 0.0
    min_index: tuple[tuple[str, float], ...] = ()
    rank_by: str | None = None
    top_k: int | None = None
    require: tuple[str, ...] = ()
    to_crs: Any = None
    outline: OutlineConfig | None = None


class ObjectTable:
    """A per-object `Table`: objects wait in an `ObjectStore` (on disk) until ``frames`` reads them back.

    Args:
        spec: The table's columns, filters and order.
        crs_wkt: The scene's CRS (the records' outlines are in it).
        model_name: The ``model`` column's value.
        folder: Where the store's temporary file goes (None: the temporary folder).
    """

    def __init__(self, spec: ObjectTableSpec, crs_wkt: str, model_name: str,
                 folder: str | os.PathLike[str] | None = None) -> None:
        self.spec = spec
        self.model_name = model_name
        self.store = ObjectStore(crs_wkt, min_area_m2=spec.min_area_m2, min_index=dict(spec.min_index), folder=folder)
        self._details: dict[str, Any] = {}  # the outline figures, updated batch by batch

    @property
    def geometry_types(self) -> set[str]:
        # reprojected outlines may be split at the antimeridian or made valid into several parts
        return self.store.geometry_types | ({"MultiPolygon"} if self.spec.to_crs else set())

    @property
    def n_objects(self) -> int:
        return self.store.rows_out

    def add(self, records: Sequence[Record]) -> None:
        """Store finished objects (those the filters reject are dropped)."""
        self.store.add(records)

    def details(self) -> dict[str, Any]:
        """What the outline refinement did (``outline``), once the frames are read; else nothing."""
        return dict(self._details)

    def frames(self, complete: bool) -> Iterator[gpd.GeoDataFrame]:
        """The objects in output order, in batches (see `ObjectStore.frames`), outlines refined (`geosam.outline`)."""
        s = self.spec
        frames = self.store.frames(self.model_name, lead=s.lead, rank_by=s.rank_by, top_k=s.top_k, require=s.require,
                                   complete=complete, to_crs=s.to_crs)
        if s.outline is None:
            return frames
        from geosam.outline import refine_frames  # one batch read ahead: neighbours across batches keep one edge

        return refine_frames(frames, s.outline, self._details)

    def close(self) -> None:
        """Remove the store's temporary file."""
        self.store.close()


def prompts_frame(plist: list[Prompt], status: list[str], records: list[Record], crs_wkt: str,
                  model_name: str) -> gpd.GeoDataFrame:
    """One row per prompt in input order (map coordinates; empty geometries where nothing was found).

    Columns: ``prompt_id, prompt_type, <carried columns>, label, status, predicted_iou, <object hook
    columns>, area_m2 (m2), model, geometry``.

    Args:
        plist: The run's prompts.
        status: Their final statuses.
        records: The finished objects (``key``: the prompt's index).
        crs_wkt: The scene's CRS.
        model_name: The ``model`` column's value.

    Returns:
        The table.
    """
    from shapely.geometry import Polygon

    by_key = {r.key: r for r in records}
    geoms = [by_key[i].geom if i in by_key else Polygon() for i in range(len(plist))]
    carried: list[str] = []
    for p in plist:
        for c in p.attrs:
            if c not in carried:
                carried.append(c)
    data: dict[str, Any] = {
        "prompt_id": [p.prompt_id for p in plist],
        "prompt_type": [p.kind for p in plist],
    }
    for c in carried:
        name = f"input_{c}" if c in OUTPUT_COLUMNS or c == "geometry" else c
        if c == "label" and all(p.attrs.get(c) == p.label for p in plist):
            continue  # the label column itself: it becomes `label`
        data[name] = [p.attrs.get(c) for p in plist]
    data["label"] = [p.label for p in plist]
    data["status"] = list(status)
    data["predicted_iou"] = np.array([by_key[i].predicted_iou if i in by_key else np.nan for i in range(len(plist))])
    for c in sorted({k for r in records for k in r.extra}):
        data[c] = [by_key[i].extra.get(c) if i in by_key else None for i in range(len(plist))]
    n_cols = len(data)
    data["model"] = [model_name] * len(plist)
    return geo_frame(data, geoms, crs_wkt, area_at=n_cols)


class PromptTable:
    """Prompt mode's `geosam.assemble.tables.Table`: one row per prompt, in input order.

    Args:
        plist: The run's prompts.
        status: Their statuses, updated by the assembler as chips arrive.
        n_windows: The run's windows (for the summary).
        chip_size_px: The run's chip size (for the summary).
        scene_path: The scene, named in warnings.
        crs_wkt: The scene's CRS.
        model_name: The ``model`` column's value.
        to_crs: Reproject the table to this CRS; None keeps the scene's.
    """

    def __init__(self, plist: list[Prompt], status: list[str], n_windows: int, chip_size_px: int, scene_path: str,
                 crs_wkt: str, model_name: str, to_crs: Any = None, outline: OutlineConfig | None = None) -> None:
        self.plist, self.status, self.n_windows, self.chip_size_px = plist, status, n_windows, chip_size_px
        self.path, self.crs_wkt, self.model_name, self.to_crs = scene_path, crs_wkt, model_name, to_crs
        self.outline = outline
        self._outline: dict[str, Any] = {}
        self.records: list[Record] = []
        self._types: set[str] = set()

    @property
    def geometry_types(self) -> set[str]:
        return self._types

    @property
    def n_objects(self) -> int:
        return sum(s == "ok" for s in self.status)

    def add(self, records: Sequence[Record]) -> None:
        """Keep the prompts' objects."""
        self.records.extend(records)
        self._types.update(r.geom.geom_type for r in records)

    def details(self) -> dict[str, Any]:
        """Prompts, windows, chip size and status counts; warns about unusable prompts (see `report_statuses`)."""
        report_statuses(self.path, self.plist, self.status)
        return {"prompts": len(self.plist), "windows": self.n_windows, "chip_size_px": self.chip_size_px,
                "status_counts": {s: self.status.count(s) for s in sorted(set(self.status))}, **self._outline}

    def frames(self, complete: bool) -> Iterator[gpd.GeoDataFrame]:
        """The one table (``complete`` plays no part: a prompt's window is read whole or not at all)."""
        gdf = prompts_frame(self.plist, self.status, self.records, self.crs_wkt, self.model_name)
        if gdf.geometry.is_empty.any():
            self._types.add("Polygon")
        hook = _outline_hook(self.outline, self._outline)
        if hook is not None:
            gdf = hook(gdf)
        if self.to_crs:
            from geosam.assemble.reproject import reproject

            self._types.add("MultiPolygon")  # split at the antimeridian or made valid into parts
            gdf = reproject(gdf, self.to_crs)
        yield gdf

    def close(self) -> None:
        """Nothing to release."""


def _outline_hook(cfg: OutlineConfig | None, details: dict[str, Any]) -> Any:
    """The batch hook refining outlines as ``cfg`` says (figures into ``details["outline"]``), or None."""
    if cfg is None or not cfg.active:
        return None
    from geosam.outline import outline_hook

    return outline_hook(cfg, details)


def min_index_pairs(min_index: Mapping[str, float] | Sequence[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    """``min_index`` thresholds as sorted ``(index, threshold)`` pairs (hashable, for `ObjectTableSpec`).

    Args:
        min_index: A mapping or pairs of index name to threshold.

    Returns:
        The pairs, sorted by name.
    """
    items = min_index.items() if isinstance(min_index, Mapping) else min_index
    return tuple(sorted((str(k), float(v)) for k, v in items))


__all__ = ["ObjectTable", "ObjectTableSpec", "PromptTable", "Table", "min_index_pairs", "prompts_frame"]
