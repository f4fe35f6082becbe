"""Assemblers: per-chip results -> finished objects, in any chip order.

An `Assembler` consumes `ChipResult` values and
hands out `StitchedObject` values when they are finished.
Segment-everything (and text) mode stitches masks across chip seams
(`GridAssembler`, over `Stitcher`); prompt mode has
exactly one window per prompt and assembles one object per prompt
(`PromptAssembler`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from geosam.assemble.result import FAILED, ChipResult
from geosam.assemble.seams import SEAM_TOLERANCE_PX
from geosam.assemble.stitch import StitchedObject, Stitcher, mask_to_pixel_geometry
from geosam.tile.grid import ChipSpec


class Assembler(Protocol):
    """What the run loop hands chip results to."""

    def add(self, spec: ChipSpec, result: ChipResult, prompt_ids: Sequence[int] = ()) -> None: ...

    def pop_finished(self, final: bool = False) -> list[StitchedObject]: ...


class GridAssembler:
    """Stitch masks of a chip grid into whole objects (masks with different labels never merge).

    Once a chip has failed (status ``failed``), every finished object gets
    ``extra["complete"]``: False when its pixels touch a failed chip's window
    (see `geosam.write.failed_chips`). An object is finished only after all its
    chips' neighbours, so the failures that can touch it are known by then.
    """

    def __init__(self, specs: Sequence[ChipSpec], match_iou: float,
                 seam_tolerance_px: int = SEAM_TOLERANCE_PX) -> None:
        self.stitcher = Stitcher(specs, match_iou=match_iou, seam_tolerance_px=seam_tolerance_px)
        self.failed: list[Any] = []  # failed chips' windows as shapely boxes (scene pixel frame)

    def add(self, spec: ChipSpec, result: ChipResult, prompt_ids: Sequence[int] = ()) -> None:
        if result.status == FAILED:
            from shapely.geometry import box

            self.failed.append(box(*spec.window.bounds()))
        attrs = None if result.labels is None else [{"label": lab} for lab in result.labels]
        self.stitcher.add(spec, result, attrs)

    def pop_finished(self, final: bool = False) -> list[StitchedObject]:
        objs = self.stitcher.pop_finished(final=final)
        if self.failed:
            for o in objs:
                o.extra["complete"] = not any(o.geom_px.intersects(w) for w in self.failed)
        return objs

    @property
    def polygonise_s(self) -> float:
        return self.stitcher.polygonise_s


class PromptAssembler:
    """One object per prompt. ``status`` holds each prompt's status (index = the run's prompt index)."""

    def __init__(self, status: list[str]) -> None:
        self.status = status
        self._ready: list[StitchedObject] = []
        self.polygonise_s = 0.0

    def add(self, spec: ChipSpec, result: ChipResult, prompt_ids: Sequence[int] = ()) -> None:
        """``prompt_ids[k]``: the run's index of the task's prompt ``k``."""
        if result.prompt_status is not None:
            for k, st in enumerate(result.prompt_status):
                self.status[prompt_ids[k]] = st
        found: set[int] = set()
        for mc in result.crops():
            g = mask_to_pixel_geometry(mc.mask, mc.bbox.col_off, mc.bbox.row_off)
            key = prompt_ids[mc.prompt_index]
            if g is None:
                continue
            found.add(key)
            self._ready.append(StitchedObject(
                geom_px=g, area_px=mc.area_px, predicted_iou=mc.predicted_iou, stability_score=mc.stability_score,
                n_chips=1, n_pieces=1, chips=((spec.row, spec.col),), attrs=[{"key": key, "label": mc.label}],
                mask=mc.mask, bbox=mc.bbox,
            ))
        for key in prompt_ids:  # decoded, but nothing left (e.g. the mask lay on invalid pixels only)
            if self.status[key] == "ok" and key not in found:
                self.status[key] = "empty"

    def pop_finished(self, final: bool = False) -> list[StitchedObject]:
        out, self._ready = self._ready, []
        return out


__all__ = ["Assembler", "GridAssembler", "PromptAssembler"]
