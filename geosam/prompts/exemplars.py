"""Exemplar boxes for SAM 3 (``segment_text(..., exemplars=...)``, ``geosam text --exemplars``): input and windows.

Input: a GeoDataFrame or a vector file path; one row per exemplar box, any CRS
(reprojected to the scene's; a frame without a CRS is in the scene's). A row's box
is its geometry's bounding box in the scene's pixel frame (a Polygon drawn around an
object; a Point is refused). Column ``label`` (optional): 1 / 0, true / false,
"positive" / "negative" (default positive). A box wholly outside the scene is an
error naming the file and row; a box partly outside is clipped to the scene.

Windows (:func:`exemplar_windows`): each exemplar is shown to the model on a window
of the chip's size (``chip_size_px``, smaller only where the scene is) centred on it
and shifted inside the scene, so that objects appear at the scale they have on every
chip; exemplars that lie whole inside one window share it. Nothing here needs pixels
or a model: it all runs before the model loads.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from geosam.errors import ConfigError, PromptError, PromptOutsideSceneError
from geosam.windows import PixelWindow

_POSITIVE = {"1", "true", "t", "yes", "positive", "pos", "+"}
_NEGATIVE = {"0", "false", "f", "no", "negative", "neg", "-"}


@dataclass(frozen=True)
class Exemplar:
    """One exemplar box: ``row`` (its row index in the input), ``box`` (x0, y0, x1, y1) in
    scene pixels (x = column), ``positive`` (False: a negative exemplar, "not like this")."""

    row: Any
    box: tuple[float, float, float, float]
    positive: bool = True


def _label(value: Any, where: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    if isinstance(value, bool) or (isinstance(value, (int, float)) and float(value) in (0.0, 1.0)):
        return bool(value)
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars
        return _label(value.item(), where)
    text = str(value).strip().lower()
    if text in _POSITIVE:
        return True
    if text in _NEGATIVE:
        return False
    raise PromptError(f"{where}: label {value!r} is neither positive (1, true, positive) nor negative "
                      "(0, false, negative)")


def _frame(exemplars: Any) -> tuple[Any, str]:
    """(GeoDataFrame, name for messages) of a frame or a vector file path."""
    import geopandas as gpd

    if isinstance(exemplars, gpd.GeoDataFrame):
        return exemplars, str(exemplars.attrs.get("geosam_source", "the exemplars"))
    if isinstance(exemplars, (str, os.PathLike)):
        path = os.fspath(exemplars)
        if not os.path.exists(path):
            raise PromptError(f"{path}: exemplar file not found")
        try:
            return gpd.read_file(path), path
        except Exception as exc:  # pyogrio raises several types for unreadable files
            raise PromptError(f"{path}: cannot read the exemplars as a vector file ({exc})") from exc
    raise PromptError(f"exemplars must be a GeoDataFrame or a vector file path, got {type(exemplars).__name__}")


def _to_px(inv: Any, bounds: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = bounds
    corners = [inv @ (x, y) for x, y in ((x0, y0), (x0, y1), (x1, y0), (x1, y1))]
    cs, rs = [float(c) for c, _ in corners], [float(r) for _, r in corners]
    return min(cs), min(rs), max(cs), max(rs)


def read_exemplars(exemplars: Any, scene_crs: Any, transform: Any, width: int, height: int) -> list[Exemplar]:
    """Exemplar boxes in scene pixels (see the module docstring); PromptError naming the file and row otherwise."""
    from geosam.geo import same_crs
    from geosam.prompts.parse import check_coordinates

    gdf, where = _frame(exemplars)
    if len(gdf) == 0:
        raise PromptError(f"{where}: no exemplar boxes (the file has no rows)")
    if gdf.crs is None:
        gdf = gdf.set_crs(scene_crs, allow_override=True)
    check_coordinates(gdf, where)
    geoms = gdf.geometry.to_crs(scene_crs) if not same_crs(gdf.crs, scene_crs) else gdf.geometry
    labels = gdf["label"] if "label" in gdf.columns else [None] * len(gdf)
    inv = ~transform
    out = []
    for row, geom, lab in zip(gdf.index, geoms, labels):
        at = f"{where}, row {row!r}"
        if geom is None or geom.is_empty:
            raise PromptError(f"{at}: the exemplar has no geometry")
        if geom.geom_type == "Point":
            raise PromptError(f"{at}: an exemplar is a box (a polygon around one object), got a Point")
        x0, y0, x1, y1 = _to_px(inv, tuple(geom.bounds))
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise PromptOutsideSceneError(f"{at}: the box cannot be reprojected to the scene's CRS")
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise PromptOutsideSceneError(
                f"{at}: the exemplar box (pixels {x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}) lies outside the scene "
                f"({width} x {height} px); check its CRS")
        box = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            raise PromptError(f"{at}: the exemplar box has no area (a line or a point); draw a box around the object")
        out.append(Exemplar(row=row.item() if hasattr(row, "item") else row, box=box, positive=_label(lab, at)))
    if not any(e.positive for e in out):
        raise PromptError(f"{where}: every exemplar is negative; give at least one positive box")
    return out


def _window(box: tuple[float, float, float, float], size: tuple[int, int], width: int, height: int) -> PixelWindow:
    """A window of ``size`` (w, h) centred on ``box``, shifted inside the scene."""

    def axis(c: float, side: int, n: int) -> int:
        return min(max(math.floor(c - side / 2.0), 0), n - side)

    w, h = size
    return PixelWindow(axis((box[0] + box[2]) / 2.0, w, width), axis((box[1] + box[3]) / 2.0, h, height), w, h)


def _inside(win: PixelWindow, box: tuple[float, float, float, float]) -> bool:
    return win.col_off <= box[0] and win.row_off <= box[1] and box[2] <= win.col_end and box[3] <= win.row_end


def exemplar_windows(exemplars: list[Exemplar], width: int, height: int,
                     chip_size_px: int) -> list[tuple[PixelWindow, list[int]]]:
    """Windows of the chips' size showing every exemplar whole: ``[(window, [exemplar index, ...]), ...]``.

    Greedy in input order: the first exemplar not yet shown gets a window centred on it; every
    other exemplar not yet shown that lies whole inside that window joins it. ConfigError for a
    box larger than a chip (it could not be shown whole, nor found whole on a chip).
    """
    size = (min(chip_size_px, width), min(chip_size_px, height))
    for e in exemplars:
        bw, bh = e.box[2] - e.box[0], e.box[3] - e.box[1]
        if bw > size[0] or bh > size[1]:
            raise ConfigError(f"exemplar row {e.row!r} is {bw:.0f} x {bh:.0f} px, larger than a chip "
                              f"({size[0]} x {size[1]} px): raise chip_size_px (--chip-size)")
    left = list(range(len(exemplars)))
    out: list[tuple[PixelWindow, list[int]]] = []
    while left:
        win = _window(exemplars[left[0]].box, size, width, height)
        members = [i for i in left if _inside(win, exemplars[i].box)]
        out.append((win, members))
        left = [i for i in left if i not in members]
    return out


def window_boxes(exemplars: list[Exemplar], members: list[int], win: PixelWindow) -> tuple[list[list[float]], list[int]]:
    """SAM 3's box input for one window: normalised (cx, cy, w, h) per member (0..1 of the window, which
    SAM 3 resizes to its square input without padding) and labels (1 positive, 0 negative)."""
    boxes, labels = [], []
    for i in members:
        x0, y0, x1, y1 = exemplars[i].box
        x0, x1 = x0 - win.col_off, x1 - win.col_off
        y0, y1 = y0 - win.row_off, y1 - win.row_off
        boxes.append([(x0 + x1) / 2 / win.width, (y0 + y1) / 2 / win.height, (x1 - x0) / win.width,
                      (y1 - y0) / win.height])
        labels.append(int(exemplars[i].positive))
    return boxes, labels


__all__ = ["Exemplar", "exemplar_windows", "read_exemplars", "window_boxes"]
