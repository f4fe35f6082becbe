"""What a finished run did: `RunSummary`, the one type of a run's statistics in every mode.

The run loop counts into a mutable `geosam.run.loop.RunStats` while it works; when the run
ends the runner freezes those counts, with the scene, the object count, the wall time, the
compute dtype and (for a run written to a file) the output path, into a `RunSummary`. A
GeoDataFrame result carries it as a plain dict in ``gdf.attrs["geosam"]`` (`RunSummary.as_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from geosam.run.loop import RunStats


@dataclass(frozen=True)
class RunSummary:
    """The statistics of one finished run (any mode).

    Attributes:
        scene: The scene's path (or a DataArray's description).
        objects: Objects in the output table (prompt mode: prompts that found an object).
        seconds: Wall time of the run, in seconds.
        output: The written file, or None when the table was returned in memory.
        dtype: The compute dtype the model ran in ("float32", "bfloat16", "float16"), decided once
            on the client; None when the caller gave its own mask generator.
        chips_total: Chip tasks of the run.
        chips_skipped_invalid: Chips without a valid pixel (not generated).
        chips_failed: One entry per chip that could not be read (see `geosam.write.failed_chips`).
        chips_failed_crs: WKT of the CRS of the failed chips' ``bounds``; None when none failed.
        chips_replayed: Chips whose results came from a journal.
        chips_empty: Chips generated without any mask.
        chips_skipped_prefilter: Chips the index prefilter skipped.
        prompts_total: Grid prompts on valid pixels (counted when the prefilter runs).
        prompts_skipped_prefilter: Grid prompts the prefilter dropped.
        masks: Masks kept over all chips.
        timings_s: Seconds per stage (summed over workers on Dask).
        details: The mode's own figures, e.g. text mode's ``phrases`` or prompt mode's ``status_counts``.
    """

    scene: str
    objects: int
    seconds: float
    output: str | None = None
    dtype: str | None = None
    chips_total: int = 0
    chips_skipped_invalid: int = 0
    chips_failed: tuple[Mapping[str, Any], ...] = ()
    chips_failed_crs: str | None = None
    chips_replayed: int = 0
    chips_empty: int = 0
    chips_skipped_prefilter: int = 0
    prompts_total: int = 0
    prompts_skipped_prefilter: int = 0
    masks: int = 0
    timings_s: Mapping[str, float] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "timings_s", dict(self.timings_s))  # a copy: the loop's dict goes on counting
        object.__setattr__(self, "details", dict(self.details))

    @classmethod
    def from_stats(cls, stats: RunStats, *, scene: str, objects: int, seconds: float, crs_wkt: str,
                   output: str | None = None, dtype: str | None = None,
                   details: Mapping[str, Any] | None = None) -> RunSummary:
        """Freeze the loop's counts.

        Args:
            stats: The loop's counts.
            scene: The scene's path.
            objects: Rows of the output table.
            seconds: Wall time of the run (s).
            crs_wkt: The scene's CRS, recorded with the failed chips' bounds.
            output: The written file, if any.
            dtype: The run's compute dtype, if the run built the model.
            details: The mode's own figures.

        Returns:
            The summary.
        """
        return cls(scene=scene, objects=objects, seconds=seconds, output=output, dtype=dtype,
                   chips_total=stats.chips_total, chips_skipped_invalid=stats.chips_skipped_invalid,
                   chips_failed=tuple(stats.chips_failed), chips_failed_crs=crs_wkt if stats.chips_failed else None,
                   chips_replayed=stats.chips_replayed, chips_empty=stats.chips_empty,
                   chips_skipped_prefilter=stats.chips_skipped_prefilter, prompts_total=stats.prompts_total,
                   prompts_skipped_prefilter=stats.prompts_skipped_prefilter, masks=stats.masks,
                   timings_s=stats.timings_s, details=details or {})

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain values (``gdf.attrs["geosam"]``): the mode's ``details`` at the top level,
        ``chips_failed_crs`` only when a chip failed.

        Returns:
            A new dict.
        """
        out: dict[str, Any] = {
            "scene": self.scene, "objects": self.objects, "seconds": self.seconds, "dtype": self.dtype,
            "chips_total": self.chips_total, "chips_skipped_invalid": self.chips_skipped_invalid,
            "chips_failed": [dict(e) for e in self.chips_failed], "chips_replayed": self.chips_replayed,
            "chips_empty": self.chips_empty, "chips_skipped_prefilter": self.chips_skipped_prefilter,
            "prompts_total": self.prompts_total, "prompts_skipped_prefilter": self.prompts_skipped_prefilter,
            "masks": self.masks, "timings_s": dict(self.timings_s),
        }
        if self.output is not None:
            out["output"] = self.output
        if self.chips_failed_crs is not None:
            out["chips_failed_crs"] = self.chips_failed_crs
        out.update(self.details)
        return out


__all__ = ["RunSummary"]
