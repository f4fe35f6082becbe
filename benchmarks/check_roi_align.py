"""geosam's plain-torch ``roi_align`` against real ``torchvision.ops.roi_align`` (one check, not a speed race).

Run it with a Python that has torchvision, e.g. a scratch venv (torch 2.14.1 + torchvision 0.29.1)::

    /work/scratch-tv/bin/python benchmarks/check_roi_align.py

``geosam/models/roi_align.py`` needs only torch, so it is loaded from its file (geosam's other
dependencies need not be installed there). Random feature maps and boxes (partly and wholly outside
the map, smaller than a pixel, malformed), every combination of ``aligned``, ``sampling_ratio``
(-1, 0, 1, 2, 4) and ``spatial_scale``, float32 and float64, both box forms (``Tensor[K, 5]`` and a
per-image list), plus SAM 3's own call (72 x 72 x 256 features, 7 x 7 output, adaptive sampling).
Writes ``benchmarks/results/roi_align.json``: max absolute difference per case and overall, the number
of bit-identical outputs, shapes, torch / torchvision versions, the CPU, and the seconds per call of both.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "roi_align.json"


def _load_geosam_roi_align() -> Any:
    spec = importlib.util.spec_from_file_location("geosam_roi_align", ROOT / "geosam" / "models" / "roi_align.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.roi_align


def _case(seed: int, dtype: torch.dtype, n: int = 2, c: int = 8, h: int = 17, w: int = 23,
          k: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    xy = torch.rand(k, 2, generator=g, dtype=dtype) * torch.tensor([w + 10.0, h + 10.0], dtype=dtype) - 5
    wh = torch.rand(k, 2, generator=g, dtype=dtype) * 15
    wh[:3] = 0.4
    wh[3] = -2.0
    rois = torch.cat([torch.randint(0, n, (k, 1), generator=g).to(dtype), xy, xy + wh], dim=1)
    return feat, rois


def _timed(fn: Any, reps: int = 5) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main() -> int:
    import torchvision
    from torchvision.ops import roi_align as tv_roi_align

    mine = _load_geosam_roi_align()
    cases = []
    worst = 0.0
    identical = total = 0
    for i, (aligned, sr, scale, dtype) in enumerate(itertools.product(
            (False, True), (-1, 0, 1, 2, 4), (1.0, 0.5, 0.25), (torch.float32, torch.float64))):
        feat, rois = _case(i, dtype)
        for out_size in ((7, 7), (3, 5)):
            a = mine(feat, rois, out_size, spatial_scale=scale, sampling_ratio=sr, aligned=aligned)
            b = tv_roi_align(feat, rois, out_size, spatial_scale=scale, sampling_ratio=sr, aligned=aligned)
            per_image = [rois[rois[:, 0] == j, 1:] for j in range(feat.shape[0])]
            order = torch.cat([torch.nonzero(rois[:, 0] == j).flatten() for j in range(feat.shape[0])])
            b_list = tv_roi_align(feat, per_image, out_size, spatial_scale=scale, sampling_ratio=sr, aligned=aligned)
            a_list = mine(feat, per_image, out_size, spatial_scale=scale, sampling_ratio=sr, aligned=aligned)
            diff = max(float((a - b).abs().max()), float((a_list - b_list).abs().max()),
                       float((a[order] - a_list).abs().max()))
            worst = max(worst, diff)
            same = bool(torch.equal(a, b)) and bool(torch.equal(a_list, b_list))
            identical += int(same)
            total += 1
            cases.append({"aligned": aligned, "sampling_ratio": sr, "spatial_scale": scale, "dtype": str(dtype),
                          "output_size": list(out_size), "input_shape": list(feat.shape), "n_rois": len(rois),
                          "max_abs_diff": diff, "bit_identical": same})
    # SAM 3's call: layer-normalised 72 x 72 x 256 features of a 1008 px image, 7 x 7 ROI, adaptive sampling
    g = torch.Generator().manual_seed(7)
    feat = torch.randn(1, 256, 72, 72, generator=g)
    boxes = [torch.tensor([[10.3, 20.7, 30.1, 44.9], [0.0, 0.0, 72.0, 72.0], [60.5, 61.2, 71.9, 71.99]])]
    a, b = mine(feat, boxes, 7), tv_roi_align(feat, boxes, 7)
    sam3 = {"input_shape": list(feat.shape), "output_shape": list(a.shape), "max_abs_diff": float((a - b).abs().max()),
            "bit_identical": bool(torch.equal(a, b)),
            "seconds_per_call_geosam": _timed(lambda: mine(feat, boxes, 7)),
            "seconds_per_call_torchvision": _timed(lambda: tv_roi_align(feat, boxes, 7))}
    result = {"torch": torch.__version__, "torchvision": torchvision.__version__, "python": sys.version.split()[0],
              "cpu": cpu_name(), "threads": torch.get_num_threads(), "cases": len(cases),
              "bit_identical_cases": identical, "max_abs_diff": max(worst, sam3["max_abs_diff"]), "sam3_call": sam3,
              "details": cases}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "details"}, indent=1))
    return 0 if result["max_abs_diff"] <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
