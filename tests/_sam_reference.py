"""segment-anything's own code as a test reference, and brute-force stand-ins where it needs cv2 or torchvision.

``segment_anything/__init__.py`` imports torchvision (not installed here), so
:func:`sam_amg` loads ``segment_anything/utils/amg.py`` (numpy + torch only)
by file path, without importing the package. :func:`reference_generate` is
``SamAutomaticMaskGenerator``'s filtering sequence (``_generate_masks``,
``_process_crop``, ``_process_batch``, ``generate``'s ``postprocess_small_regions``)
copied from segment-anything 1.0 with these stand-ins:

* the model: a decoder function (low-res logits and predicted IoU per point),
  then ``SamPredictor.postprocess_masks`` (bilinear to the input size, crop the
  padding, bilinear to the crop) and ``ResizeLongestSide.apply_coords``, both copied;
* ``torchvision.ops.batched_nms``: :func:`brute_batched_nms` (greedy, torchvision's
  float32 IoU arithmetic, stable score order);
* ``cv2``-based ``remove_small_regions``: SAM's own when cv2 imports, else
  :func:`brute_remove_small_regions` (min-label propagation; among islands tied for
  largest, the first in 2 x 2 block-raster order: cv2's 8-connected labelling
  order, checked against opencv-python-headless 5.0.0 on 20 000 random masks).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

_CACHE: dict[str, ModuleType] = {}


def sam_amg() -> ModuleType | None:
    """segment-anything's ``utils/amg.py`` as a module, or None when segment-anything is not installed."""
    if "amg" not in _CACHE:
        spec = importlib.util.find_spec("segment_anything")  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / "utils" / "amg.py"
        mspec = importlib.util.spec_from_file_location("_segment_anything_utils_amg", path)
        assert mspec is not None and mspec.loader is not None
        module = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(module)
        _CACHE["amg"] = module
    return _CACHE["amg"]


def have_cv2() -> bool:
    return importlib.util.find_spec("cv2") is not None


def brute_nms(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> list[int]:
    """Greedy NMS one box at a time, IoU in float32 as torchvision's CPU kernel; stable descending score order."""
    b = boxes.to(torch.float32).numpy()
    order = sorted(range(len(b)), key=lambda i: -float(scores[i]))  # sorted() is stable
    area = [np.float32((x1 - x0) * (y1 - y0)) for x0, y0, x1, y1 in b]
    keep: list[int] = []
    suppressed = set()
    for pos, i in enumerate(order):
        if i in suppressed:
            continue
        keep.append(i)
        for j in order[pos + 1 :]:
            w = max(np.float32(0), min(b[i][2], b[j][2]) - max(b[i][0], b[j][0]))
            h = max(np.float32(0), min(b[i][3], b[j][3]) - max(b[i][1], b[j][1]))
            inter = np.float32(w * h)
            union = np.float32(np.float32(area[i] + area[j]) - inter)
            with np.errstate(invalid="ignore", divide="ignore"):
                if np.float32(inter / union) > thresh:
                    suppressed.add(j)
    return keep


def brute_batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, thresh: float) -> torch.Tensor:
    """Per-category :func:`brute_nms`; kept indices by descending score, ties in input order (torchvision's
    coordinate-trick path, which SAM's boxes take up to 1000 boxes)."""
    keep: list[int] = []
    for c in sorted(set(idxs.tolist())):
        members = [i for i in range(len(idxs)) if idxs[i] == c]
        keep += [members[k] for k in brute_nms(boxes[members], scores[members], thresh)]
    keep.sort()
    keep.sort(key=lambda i: -float(scores[i]))
    return torch.tensor(keep, dtype=torch.int64)


def _component_labels(work: np.ndarray) -> np.ndarray:
    """8-connected components of a bool image: each pixel labelled with its component's smallest flat index
    (min-label propagation until stable; background -1). Independent of scipy and cv2."""
    h, w = work.shape
    big = h * w
    lab = np.where(work, np.arange(big).reshape(h, w), big)
    while True:
        padded = np.pad(lab, 1, constant_values=big)
        new = lab.copy()
        for dy in range(3):
            for dx in range(3):
                new = np.minimum(new, padded[dy : dy + h, dx : dx + w])
        new = np.where(work, new, big)
        if np.array_equal(new, lab):
            return np.where(work, lab, -1)
        lab = new


def brute_remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """SAM's ``remove_small_regions`` on :func:`_component_labels` (see the module docstring for the tie rule)."""
    holes = mode == "holes"
    lab = _component_labels(np.logical_xor(holes, mask))
    ids, sizes = np.unique(lab[lab >= 0], return_counts=True)
    small = ids[sizes < area_thresh]
    if small.size == 0:
        return mask, False
    if holes:
        return np.asarray(mask, dtype=bool) | np.isin(lab, small), True
    big = ids[sizes >= area_thresh]
    if big.size == 0:
        w = mask.shape[1]
        tied = ids[sizes == sizes.max()]
        rows, cols = np.nonzero(lab >= 0)
        key = {i: min(int((r // 2) * ((w + 1) // 2) + c // 2) for r, c in zip(rows, cols) if lab[r, c] == i) for i in tied}
        big = np.array([min(tied, key=lambda i: key[i])])
    return np.isin(lab, big), True


def sam_remove_small_regions() -> Callable[[np.ndarray, float, str], tuple[np.ndarray, bool]]:
    amg = sam_amg()
    return amg.remove_small_regions if amg is not None and have_cv2() else brute_remove_small_regions


# ---------------------------------------------------------------------------
# SamAutomaticMaskGenerator's sequence (segment-anything 1.0), model calls replaced by `decoder`

Decoder = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # model-frame points (N, 2) -> logits, iou


def _apply_coords(coords: np.ndarray, original_size: tuple[int, int], target: int = 1024) -> np.ndarray:
    old_h, old_w = original_size
    scale = target * 1.0 / max(old_h, old_w)
    new_h, new_w = int(old_h * scale + 0.5), int(old_w * scale + 0.5)
    coords = coords.copy().astype(float)
    coords[..., 0] = coords[..., 0] * (new_w / old_w)
    coords[..., 1] = coords[..., 1] * (new_h / old_h)
    return coords


def _postprocess_masks(masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> torch.Tensor:
    masks = F.interpolate(masks, (1024, 1024), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    if tuple(masks.shape[-2:]) == tuple(original_size):
        # torch's bilinear resize to the same size weighs each pixel 1 and its neighbour 0: a copy, bit for bit
        # (tests/test_segment_sam_diff.py checks it); skipped, it was half of a 1024 px chip's reference time
        return masks
    return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)


def _process_batch(p: dict[str, Any], decoder: Decoder, points: np.ndarray, im_size: tuple[int, int],
                   crop_box: list[int], orig_size: tuple[int, int]) -> Any:
    amg = sam_amg()
    orig_h, orig_w = orig_size
    in_points = torch.as_tensor(_apply_coords(points, im_size))
    low, iou_preds = decoder(in_points)
    scale = 1024 / max(im_size)
    input_size = (int(im_size[0] * scale + 0.5), int(im_size[1] * scale + 0.5))
    masks = _postprocess_masks(low.float(), input_size, im_size)
    data = amg.MaskData(masks=masks.flatten(0, 1), iou_preds=iou_preds.flatten(0, 1),
                        points=torch.as_tensor(points.repeat(masks.shape[1], axis=0)))
    if p["pred_iou_thresh"] > 0.0:
        data.filter(data["iou_preds"] > p["pred_iou_thresh"])
    data["stability_score"] = amg.calculate_stability_score(data["masks"], p["mask_threshold"], p["stability_score_offset"])
    if p["stability_score_thresh"] > 0.0:
        data.filter(data["stability_score"] >= p["stability_score_thresh"])
    data["masks"] = data["masks"] > p["mask_threshold"]
    data["boxes"] = amg.batched_mask_to_box(data["masks"])
    keep_mask = ~amg.is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
    if not torch.all(keep_mask):
        data.filter(keep_mask)
    data["masks"] = amg.uncrop_masks(data["masks"], crop_box, orig_h, orig_w)
    data["rles"] = amg.mask_to_rle_pytorch(data["masks"])
    del data["masks"]
    return data


def _process_crop(p: dict[str, Any], decoder: Decoder, grids: list[np.ndarray], crop_box: list[int], layer: int,
                  orig_size: tuple[int, int]) -> Any:
    amg = sam_amg()
    x0, y0, x1, y1 = crop_box
    cropped_im_size = (y1 - y0, x1 - x0)
    points_for_image = grids[layer] * np.array(cropped_im_size)[None, ::-1]
    data = amg.MaskData()
    for (points,) in amg.batch_iterator(p["points_per_batch"], points_for_image):
        data.cat(_process_batch(p, decoder, points, cropped_im_size, crop_box, orig_size))
    keep = brute_batched_nms(data["boxes"].float(), data["iou_preds"], torch.zeros(len(data["boxes"])), p["box_nms_thresh"])
    data.filter(keep)
    data["boxes"] = amg.uncrop_boxes_xyxy(data["boxes"], crop_box)
    data["points"] = amg.uncrop_points(data["points"], crop_box)
    data["crop_boxes"] = torch.tensor([crop_box for _ in range(len(data["rles"]))]).reshape(-1, 4)
    return data


def _postprocess_small_regions(mask_data: Any, min_area: int, nms_thresh: float) -> Any:
    amg = sam_amg()
    if len(mask_data["rles"]) == 0:
        return mask_data
    remove = sam_remove_small_regions()
    new_masks, scores = [], []
    for rle in mask_data["rles"]:
        mask = amg.rle_to_mask(rle)
        mask, changed = remove(mask, min_area, "holes")
        unchanged = not changed
        mask, changed = remove(mask, min_area, "islands")
        unchanged = unchanged and not changed
        new_masks.append(torch.as_tensor(mask).unsqueeze(0))
        scores.append(float(unchanged))
    masks = torch.cat(new_masks, dim=0)
    boxes = amg.batched_mask_to_box(masks)
    keep_by_nms = brute_batched_nms(boxes.float(), torch.as_tensor(scores), torch.zeros(len(boxes)), nms_thresh)
    for i_mask in keep_by_nms:
        if scores[i_mask] == 0.0:
            mask_data["rles"][i_mask] = amg.mask_to_rle_pytorch(masks[i_mask].unsqueeze(0))[0]
            mask_data["boxes"][i_mask] = boxes[i_mask]
    mask_data.filter(keep_by_nms)
    return mask_data


def reference_generate(p: dict[str, Any], decoder: Decoder, orig_size: tuple[int, int]) -> list[dict[str, Any]]:
    """SAM's ``generate`` on an image of ``orig_size`` (H, W): records with ``mask``, ``predicted_iou``,
    ``stability_score``, in SAM's order. ``p`` holds SAM's parameters."""
    amg = sam_amg()
    crop_boxes, layer_idxs = amg.generate_crop_boxes(orig_size, p["crop_n_layers"], p["crop_overlap_ratio"])
    grids = amg.build_all_layer_point_grids(p["points_per_side"], p["crop_n_layers"], p["crop_n_points_downscale_factor"])
    data = amg.MaskData()
    for crop_box, layer_idx in zip(crop_boxes, layer_idxs):
        data.cat(_process_crop(p, decoder, grids, crop_box, layer_idx, orig_size))
    if len(crop_boxes) > 1:
        cb = data["crop_boxes"].float()
        scores = 1 / ((cb[:, 2] - cb[:, 0]) * (cb[:, 3] - cb[:, 1]))  # torchvision's box_area
        data.filter(brute_batched_nms(data["boxes"].float(), scores, torch.zeros(len(data["boxes"])), p["crop_nms_thresh"]))
    data.to_numpy()
    if p["min_mask_region_area"] > 0:
        data = _postprocess_small_regions(data, p["min_mask_region_area"], max(p["box_nms_thresh"], p["crop_nms_thresh"]))
    return [
        {"mask": amg.rle_to_mask(rle), "predicted_iou": float(data["iou_preds"][i]),
         "stability_score": float(data["stability_score"][i])}
        for i, rle in enumerate(data["rles"])
    ]
