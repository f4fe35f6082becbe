"""geosam's SAM 3 post-processing and preprocessing against transformers' own ``Sam3Processor`` (one check).

geosam re-implements ``Sam3Processor.post_process_instance_segmentation`` (`geosam.models.sam3.instances`)
and SAM 3's preprocessing (`geosam.models.runtime.preprocess`) because the processor imports
torchvision. Run this with a Python that has torchvision and geosam's runtime dependencies, from the
repository root so that this checkout's geosam is imported, e.g.::

    PYTHONPATH=. /work/scratch-tv/bin/python benchmarks/check_sam3_postprocess.py

Model: the tiny random SAM 3 of the tests (``tests/_tiny_families.build_tiny_sam3``: ``save_pretrained``
into a temp dir, small CLIP tokenizer) at SAM 3's real input size, 1008 px. Input: a 1024 px chip of
``data/banepa_predict.tif`` read by geosam (as ``geosam text`` reads it), phrases "building" and "tree".

1. post-processing, same model outputs: ``instances(outputs, target_size, threshold, mask_threshold)`` vs
   ``Sam3Processor.post_process_instance_segmentation(outputs, threshold, mask_threshold, target_sizes)``
   for several score thresholds (0.0 keeps every query of the random model; quantiles of the scores),
   mask thresholds and target sizes (the chip, the 1008 px input, a non-square size), on float32 outputs
   and on the same outputs cast to bfloat16 (hypothetical: geosam's SAM 3 path runs float32, no autocast;
   ``instances`` casts to float32 first, the processor computes in the outputs' dtype);
2. preprocessing: geosam's ``pixel_values`` vs ``Sam3Processor(images=...)``'s (in uint8 levels), and
   a plain-torch variant that resizes the uint8 image itself (``F.interpolate`` on uint8, as torchvision does);
3. end to end: geosam's route (its preprocessing, backbone once, detector per phrase, ``instances``) vs
   transformers' route (``Sam3Processor`` -> ``Sam3Model(**inputs)`` -> its post-processing), plus geosam's
   route on the processor's ``pixel_values`` to separate the preprocessing's share.

Writes ``benchmarks/results/sam3_postprocess.json``.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from _machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "sam3_postprocess.json"
SCENE = ROOT / "data" / "banepa_predict.tif"
PHRASES = ("building", "tree")
CHIP_PX = 1024
INPUT_PX = 1008
MASK_THRESHOLDS = (0.5, 0.0, 0.9)


def _has_amx() -> bool:
    try:
        return "amx" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _chip() -> Any:
    from geosam.read.scene import Scene

    with Scene(str(SCENE)) as sc:
        spec = next(s for s in sc.chip_specs(CHIP_PX, 0) if s.window.width == s.window.height == CHIP_PX)
        return sc.read_chip(spec)


def compare_instances(mine: list[tuple[torch.Tensor, torch.Tensor]], ref: list[dict[str, Any]]) -> dict[str, Any]:
    """Instance counts, score and mask differences of geosam's per-phrase pairs vs the processor's dicts."""
    n_mine = [len(s) for s, _ in mine]
    n_ref = [len(r["scores"]) for r in ref]
    score_diff, pixels, differing_masks, total_pixels = 0.0, 0, 0, 0
    same_count = n_mine == n_ref
    if same_count:
        for (s, m), r in zip(mine, ref):
            if len(s):
                score_diff = max(score_diff, float((s.float() - r["scores"].float()).abs().max()))
                d = (m != r["masks"].bool()).flatten(1).sum(1)
                pixels += int(d.sum())
                differing_masks += int((d > 0).sum())
                total_pixels += m.numel()
    return {"instances_geosam": n_mine, "instances_transformers": n_ref, "same_count": same_count,
            "scores_max_abs_diff": score_diff if same_count else None,
            "mask_pixels_differing": pixels if same_count else None,
            "masks_differing": differing_masks if same_count else None, "mask_pixels_compared": total_pixels,
            "boxes": "transformers only (geosam's instances() returns no boxes; geosam derives them from masks)"}


def _cast(outputs: Any, dtype: torch.dtype) -> Any:
    out = type(outputs)(**dict(outputs.items()))
    for key in ("pred_logits", "presence_logits", "pred_masks", "pred_boxes"):
        if getattr(out, key, None) is not None:
            out[key] = getattr(out, key).to(dtype)
    return out


def postprocess_grid(proc: Any, outputs: Any, target_sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
    from geosam.models.sam3 import instances

    scores = (outputs.pred_logits.float().sigmoid() * outputs.presence_logits.float().sigmoid()).flatten()
    quantiles = [round(float(q), 6) for q in torch.quantile(scores, torch.tensor([0.25, 0.5, 0.75]))]
    thresholds = [0.0, *quantiles, 0.3]
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        out = _cast(outputs, dtype)
        for ts in target_sizes:
            for thr in thresholds:
                for mthr in MASK_THRESHOLDS:
                    mine = instances(out, ts, threshold=thr, mask_threshold=mthr)
                    ref = proc.post_process_instance_segmentation(out, threshold=thr, mask_threshold=mthr,
                                                                  target_sizes=[ts] * len(PHRASES))
                    rows.append({"outputs_dtype": str(dtype).removeprefix("torch."), "target_size": list(ts),
                                 "threshold": thr, "mask_threshold": mthr, **compare_instances(mine, ref)})
    return rows


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def agg(sel: list[dict[str, Any]]) -> dict[str, Any]:
        ok = [r for r in sel if r["same_count"]]
        return {"cases": len(sel), "same_instance_count": len(ok),
                "scores_max_abs_diff": max((r["scores_max_abs_diff"] for r in ok), default=None),
                "mask_pixels_differing": sum(r["mask_pixels_differing"] for r in ok),
                "mask_pixels_compared": sum(r["mask_pixels_compared"] for r in ok),
                "masks_compared": sum(sum(r["instances_geosam"]) for r in ok),
                "masks_differing": sum(r["masks_differing"] for r in ok)}

    return {dt: agg([r for r in rows if r["outputs_dtype"] == dt]) for dt in ("float32", "bfloat16")}


def preprocessing(bundle: Any, proc: Any, image: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    from PIL import Image

    from geosam.models import preprocess

    own = preprocess(bundle, [image])[0]
    hf = proc(images=Image.fromarray(image), return_tensors="pt")["pixel_values"]
    levels = (own - hf).abs() * 255 * torch.tensor(bundle.image_std).view(1, 3, 1, 1)  # uint8 levels
    lv = levels.round()
    # the processor resizes the uint8 image (torchvision -> torch's fixed-point uint8 antialias kernel); geosam
    # resizes it as float and rounds (geosam/models/runtime.py::preprocess): the uint8 kernel here, plain torch
    x = torch.from_numpy(image).permute(2, 0, 1).contiguous()[None]
    u8 = torch.nn.functional.interpolate(x, size=tuple(hf.shape[-2:]), mode="bilinear", align_corners=False,
                                         antialias=True)
    u8_pv = (u8.float() * bundle.rescale_factor - 0.5) / 0.5
    return own, hf, {"shape": list(hf.shape), "max_abs_diff_uint8_levels": float(levels.max()),
                     "mean_abs_diff_uint8_levels": float(levels.mean()),
                     "values_differing": int((lv > 0).sum()), "values": hf.numel(),
                     "values_differing_by_1_level": int((lv == 1).sum()),
                     "values_differing_by_more": int((lv > 1).sum()),
                     "uint8_kernel_resize_vs_processor_max_abs_diff": float((u8_pv - hf).abs().max())}


def _geosam_route(bundle: Any, pv: torch.Tensor) -> Any:
    from geosam.models.sam3 import detect, encode_text, vision_features

    return detect(bundle, vision_features(bundle, pv), encode_text(bundle, list(PHRASES)))


def end_to_end(bundle: Any, proc: Any, image: Any, own_pv: torch.Tensor, hf_pv: torch.Tensor) -> dict[str, Any]:
    """geosam's whole route vs transformers' whole route (each with its own preprocessing), threshold 0."""
    from PIL import Image

    from geosam.models.sam3 import instances

    size = (int(image.shape[0]), int(image.shape[1]))
    inputs = proc(images=[Image.fromarray(image)] * len(PHRASES), text=list(PHRASES), return_tensors="pt")
    with torch.inference_mode():
        hf_out = bundle.model(**inputs)
    own_out = _geosam_route(bundle, own_pv)
    mixed_out = _geosam_route(bundle, hf_pv)
    tok = bundle.processor(list(PHRASES), return_tensors="pt", padding="max_length", max_length=32, truncation=True)
    res: dict[str, Any] = {"input_ids_equal": bool(torch.equal(tok["input_ids"], inputs["input_ids"])),
                           "original_sizes": inputs["original_sizes"].tolist()}
    for name, out in (("geosam_route_own_preprocessing", own_out), ("geosam_route_processor_pixel_values", mixed_out)):
        res[name + "_outputs_max_abs_diff"] = {k: float((getattr(out, k).float() - getattr(hf_out, k).float()).abs().max())
                                               for k in ("pred_logits", "presence_logits", "pred_masks", "pred_boxes")}
    for thr in (0.0, 0.3):
        ref = proc.post_process_instance_segmentation(hf_out, threshold=thr, mask_threshold=0.5,
                                                      target_sizes=inputs["original_sizes"].tolist())
        res[f"threshold_{thr}"] = {
            "geosam_route_vs_transformers_route": compare_instances(instances(own_out, size, thr, 0.5), ref),
            "geosam_route_on_processor_pixel_values_vs_transformers_route":
                compare_instances(instances(mixed_out, size, thr, 0.5), ref)}
    return res


def main() -> None:
    import transformers
    from transformers import Sam3Processor

    from geosam.models import load_model
    from tests._tiny_families import build_tiny_sam3

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_sam3(Path(tmp) / "sam3", image_size=INPUT_PX)
        bundle = load_model(path, device="cpu", dtype="float32")
        proc = Sam3Processor.from_pretrained(path)
        chip = _chip()
        own_pv, hf_pv, pre = preprocessing(bundle, proc, chip.image)
        outputs = _geosam_route(bundle, own_pv)
        rows = postprocess_grid(proc, outputs, [(CHIP_PX, CHIP_PX), (INPUT_PX, INPUT_PX), (700, 900)])
        e2e = end_to_end(bundle, proc, chip.image, own_pv, hf_pv)
    import torchvision

    result = {
        "torch": torch.__version__, "torchvision": torchvision.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "cpu": cpu_name(), "threads": torch.get_num_threads(),
        "amx": _has_amx(), "gpu": False,
        "model": f"tiny random SAM 3 (tests/_tiny_families.build_tiny_sam3, image_size={INPUT_PX}, 12 queries)",
        "image_processor": type(proc.image_processor).__name__,
        "chip": {"scene": "data/banepa_predict.tif", "size_px": CHIP_PX}, "phrases": list(PHRASES),
        "postprocess_summary": _summary(rows), "preprocessing": pre, "end_to_end": e2e, "postprocess_cases": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = OUT.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=1) + "\n")
    tmp_out.replace(OUT)
    print(json.dumps({k: result[k] for k in ("postprocess_summary", "preprocessing", "end_to_end")}, indent=1))


if __name__ == "__main__":
    main()
