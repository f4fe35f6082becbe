"""Exemplar boxes for SAM 3 (``segment_text(..., exemplars=...)``, ``geosam text --exemplars``): input and windows.

Input: a GeoDataFrame or a vector file path; one row per exemplar box, any CRS
(reprojected to the scene's; a frame without a CRS is in the scene's). A row's box
is its geometry's bounding box in the scene's pixel frame (a Polygon drawn around an
object; a Point is refused). Column ``label`` (optional): 1 / 0, true / false,
"positive" / "negative", every spelling of `geosam.prompts.labels` (default positive). A box wholly outside the scene is an
error naming the file and row; a box partly outside is clipped to the scene.

Windows (`exemplar_windows`): each exemplar is shown to the model on a window
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
from geosam.geo import map_bounds_to_pixels
from geosam.prompts.labels import parse_label
from geosam.windows import PixelWindow


@dataclass(frozen=True)
class Exemplar:
    """One exemplar box.

    Attributes:
        row: Its row index in the input.
        box: (x0, y0, x1, y1) in scene pixels (x = column).
        positive: False for a negative exemplar ("not like this").
    """

    row: Any
    box: tuple[float, float, float, float]
    positive: bool = True


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


def exemplars_have_crs(exemplars: Any) -> bool:
    """Whether the exemplars (a GeoDataFrame or a vector file path) have a CRS of their own; without one,
    `read_exemplars` takes each scene's (see `geosam.prompts.gather.check_scenes_crs`).

    Raises:
        PromptError: An unreadable file.
    """
    return _frame(exemplars)[0].crs is not None


def read_exemplars(exemplars: Any, scene_crs: Any, transform: Any, width: int, height: int) -> list[Exemplar]:
    """Exemplar boxes in scene pixels (see the module docstring).

    Args:
        exemplars: A GeoDataFrame or a vector file path.
        scene_crs: The scene's CRS (the boxes are reprojected to it).
        transform: The scene's transform (pixel -> map).
        width: The scene's width (px).
        height: The scene's height (px).

    Returns:
        The exemplars, in row order.

    Raises:
        PromptError: An unreadable file, a row without a box, a bad label, or only negative boxes
            (naming the file and row).
        PromptOutsideSceneError: A box outside the scene.
    """
    from geosam.geo import same_crs
    from geosam.prompts.checks import check_coordinates

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
        x0, y0, x1, y1 = map_bounds_to_pixels(inv, tuple(geom.bounds))
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise PromptOutsideSceneError(f"{at}: the box cannot be reprojected to the scene's CRS")
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise PromptOutsideSceneError(
                f"{at}: the exemplar box (pixels {x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}) lies outside the scene "
                f"({width} x {height} px); check its CRS")
        box = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            raise PromptError(f"{at}: the exemplar box has no area (a line or a point); draw a box around the object")
        out.append(Exemplar(row=row.item() if hasattr(row, "item") else row, box=box, positive=parse_label(lab, at)))
    if not any(e.positive for e in out):
        raise PromptError(f"{where}: every exemplar is negative; give at least one positive box")
    return out


def exemplar_windows(exemplars: list[Exemplar], width: int, height: int,
                     chip_size_px: int) -> list[tuple[PixelWindow, list[int]]]:
    """Windows of the chips' size showing every exemplar whole.

    Greedy in input order: the first exemplar not yet shown gets a window centred on it; every
    other exemplar not yet shown that lies whole inside that window joins it.

    Args:
        exemplars: The exemplars (scene pixels).
        width: The scene's width (px).
        height: The scene's height (px).
        chip_size_px: The run's chip size.

    Returns:
        ``[(window, [exemplar index, ...]), ...]``.

    Raises:
        ConfigError: A box larger than a chip (it could not be shown whole, nor found whole on a chip).
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
        win = PixelWindow.centred_on(exemplars[left[0]].box, size, width, height)
        members = [i for i in left if win.contains_box(exemplars[i].box)]
        out.append((win, members))
        left = [i for i in left if i not in members]
    return out


def window_boxes(exemplars: list[Exemplar], members: list[int], win: PixelWindow) -> tuple[list[list[float]], list[int]]:
    """SAM 3's box input for one window.

    Args:
        exemplars: The exemplars (scene pixels).
        members: Indices of the exemplars shown on ``win``.
        win: The window.

    Returns:
        Normalised (cx, cy, w, h) per member (0..1 of the window, which SAM 3 resizes to its square input
        without padding) and labels (1 positive, 0 negative).
    """
    boxes, labels = [], []
    for i in members:
        x0, y0, x1, y1 = exemplars[i].box
        x0, x1 = x0 - win.col_off, x1 - win.col_off
        y0, y1 = y0 - win.row_off, y1 - win.row_off
        boxes.append([(x0 + x1) / 2 / win.width, (y0 + y1) / 2 / win.height, (x1 - x0) / win.width,
                      (y1 - y0) / win.height])
        labels.append(int(exemplars[i].positive))
    return boxes, labels


__all__ = ["Exemplar", "exemplar_windows", "exemplars_have_crs", "read_exemplars", "window_boxes"]
