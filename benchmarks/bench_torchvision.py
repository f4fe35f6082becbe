"""torch 2.13 without torchvision (option a) vs torch 2.14.1 + torchvision 0.29.1 (option b), side by side.

Issue 13 asks whether geosam keeps its install (torch 2.13, no torchvision: geosam's own SAM 2 / SAM 3
preprocessing and a plain-torch ``roi_align``) or moves to torch 2.14.1 + torchvision 0.29.1 (transformers'
``Sam3Processor`` and ``torchvision.ops.roi_align`` usable as they are). This script measures what the choice
changes, in one run, with each venv's own python in subprocesses:

1. **install** (``--install-dir DIR``): two fresh venvs created in DIR, one after the other, from the pip cache
   / wheel files already on the machine: (a) ``torch==2.13.0`` + geosam's runtime dependencies, (b)
   ``torch==2.14.1 torchvision==0.29.1`` + the same; wall time and ``du`` size of each (removed afterwards).
   Without ``--install-dir`` only the sizes of the two given venvs and of their torch packages are recorded.
2. **speed** per 1024 px chip of ``data/banepa_predict.tif``, the same saved weights in both venvs:
   ``text``: text mode's per-chip generator (`geosam.segment.text.TextMaskGenerator`, two phrases) on a
   tiny random ``Sam3Config`` (``tests/_tiny_families.tiny_sam3_config``, 1008 px input like SAM 3);
   ``sam_tiny``: segment-everything (`geosam.segment.SamMaskGenerator`, ``--points-per-side``) on the tiny
   random ``SamConfig`` of ``tests/_tiny_sam.py``; ``vitb_encode``: geosam's preprocess + image encoder on a
   random ViT-B ``SamConfig`` (SAM's real encoder size: where the torch version's kernels matter).
   Runs alternate between the venvs (a, b, b, a, ...), each a fresh process: one warm-up chip, then
   ``--reps`` timed chips per workload. The outputs of the two torch versions are compared (max abs diff).
3. **import and load**: ``import geosam``, then ``geosam.models`` (torch + transformers), then loading each
   checkpoint with `geosam.models.load_model`, in every fresh process (file cache warm after run 1).
4. **processor** (option b's venv only): geosam's SAM 3 preprocessing
   (`geosam.models.runtime.preprocess`) vs transformers' ``Sam3Processor`` (needs torchvision) on the
   same chip: time and max abs difference of ``pixel_values``; and the whole transformers route per chip
   (``Sam3Processor`` + ``Sam3Model`` forward + ``post_process_instance_segmentation``, one image per phrase as
   its API takes them) next to geosam's generator.

    .venv/bin/python benchmarks/bench_torchvision.py --python-b /work/scratch-tv/bin/python \
        [--install-dir /work/scratch-install] [--runs 2] [--reps 3] [--reps-vitb 1]

Results: ``benchmarks/results/torchvision.json``. About 14 minutes on 2 shared CPU cores without
``--install-dir`` (the ViT-B encodes dominate); the installs add about 5 minutes and need ~8 GB of free disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "data" / "banepa_predict.tif"
PHRASES = ("building", "tree")
#: score threshold of both text routes: 0 keeps every query, so every phrase has masks (random weights score
#: ~0.1-0.3), and geosam's TextMaskGenerator raises on a phrase with no instance (numpy cannot reshape an
#: empty (0, H, W) stack to (0, -1): geosam/segment/text.py, reported)
SCORE_THRESHOLD = 0.0
CHIP_PX = 1024
SAM3_INPUT_PX = 1008
#: geosam's runtime dependencies, pinned to the main venv's versions for the install measurement
RUNTIME_DEPS = ("transformers==5.24.0", "numpy==2.4.6", "rasterio==1.4.4", "shapely==2.2.0", "geopandas==1.2.0",
                "pyogrio==0.13.0", "pyproj==3.7.2", "pyarrow==26.0.1", "scipy==1.17.1", "click==8.5.1",
                "tqdm==4.70.1", "pillow==13.0.0", "matplotlib==3.11.2", "safetensors==0.8.0")
OPTIONS = {"a": ("torch==2.13.0",), "b": ("torch==2.14.1", "torchvision==0.29.1")}


# ---------------------------------------------------------------------------
# worker side (runs under either venv's python; imports only what both have)


def _chip() -> Any:
    from geosam.read.scene import Scene

    with Scene(str(SCENE)) as sc:
        spec = next(s for s in sc.chip_specs(CHIP_PX, 0) if s.window.width == s.window.height == CHIP_PX)
        return sc.read_chip(spec)


def _timed_reps(fn: Any, reps: int) -> tuple[list[float], Any]:
    out = fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def worker_speed(spec: dict[str, Any]) -> dict[str, Any]:
    """Import, load and per-chip times in this interpreter; outputs saved to ``spec['npz']``."""
    t0 = time.perf_counter()
    import geosam  # noqa: F401

    t1 = time.perf_counter()
    import numpy as np
    import torch

    from geosam.config.text import TextConfig
    from geosam.models import encode, load_model, preprocess
    from geosam.segment import SamMaskGenerator
    from geosam.segment.text import TextMaskGenerator

    t2 = time.perf_counter()
    loads = {}
    bundles = {}
    for key in ("sam3", "sam_tiny", "vitb"):
        s = time.perf_counter()
        bundles[key] = load_model(spec[key], device="cpu", dtype="float32")
        loads[key] = time.perf_counter() - s
    chip = _chip()
    text = TextMaskGenerator(bundles["sam3"], TextConfig(phrases=PHRASES, score_threshold=SCORE_THRESHOLD))
    amg = SamMaskGenerator(bundles["sam_tiny"], points_per_side=spec["points_per_side"])
    reps = spec["reps"]
    t_text, text_out = _timed_reps(lambda: text.generate(chip), reps)
    t_amg, amg_out = _timed_reps(lambda: amg.generate(chip), reps)
    vb = bundles["vitb"]
    t_vitb, emb = _timed_reps(lambda: encode(vb, preprocess(vb, [chip.image])[0]), spec["reps_vitb"])
    with torch.inference_mode():
        pv = preprocess(bundles["sam3"], [chip.image])[0]
    np.savez(spec["npz"], text_scores=np.asarray(text_out.predicted_iou, np.float32),
             text_masks=np.asarray(text_out.masks), amg_masks=np.asarray(amg_out.masks),
             vitb_embedding=emb.float().numpy() if isinstance(emb, torch.Tensor) else np.zeros(0),
             sam3_pixel_values=pv.numpy())
    return {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "import_geosam_s": t1 - t0, "import_models_s": t2 - t1, "load_s": loads,
        "text_s": t_text, "sam_tiny_s": t_amg, "vitb_encode_s": t_vitb,
        "text_masks": len(text_out.masks), "sam_tiny_masks": len(amg_out.masks),
        "text_stage_s": {k: v / (reps + 1) for k, v in text.timings_s.items()},
        "sam_tiny_stage_s": {k: v / (reps + 1) for k, v in amg.timings_s.items()},
        "vitb_embedding_abs_mean": float(emb.float().abs().mean()) if isinstance(emb, torch.Tensor) else None,
    }


def _transformers_route(proc: Any, model: Any, image: Any, reps: int) -> tuple[list[float], int]:
    """Per-chip seconds of Sam3Processor + Sam3Model + post-processing (one image per phrase) and masks found."""
    import torch

    def run() -> int:
        inputs = proc(images=[image] * len(PHRASES), text=list(PHRASES), return_tensors="pt")
        with torch.inference_mode():
            out = model(**inputs)
        res = proc.post_process_instance_segmentation(out, threshold=SCORE_THRESHOLD, mask_threshold=0.5,
                                                      target_sizes=inputs["original_sizes"].tolist())
        return sum(len(r["masks"]) for r in res)

    return _timed_reps(run, reps)


def worker_processor(spec: dict[str, Any]) -> dict[str, Any]:
    """geosam's SAM 3 preprocessing vs ``Sam3Processor`` (torchvision) in this interpreter."""
    import torch
    from PIL import Image
    from transformers import Sam3Processor

    from geosam.config.text import TextConfig
    from geosam.models import load_model, preprocess
    from geosam.segment.text import TextMaskGenerator

    chip = _chip()
    image = Image.fromarray(chip.image)
    proc = Sam3Processor.from_pretrained(spec["sam3"])
    bundle = load_model(spec["sam3"], device="cpu", dtype="float32")
    reps = spec["reps"] * 3
    t_own, own = _timed_reps(lambda: preprocess(bundle, [chip.image])[0], reps)
    t_hf, hf = _timed_reps(lambda: proc(images=image, return_tensors="pt")["pixel_values"], reps)
    diff = (own - hf).abs()
    t_route, n_route = _transformers_route(proc, bundle.model, image, spec["reps"])
    gen = TextMaskGenerator(bundle, TextConfig(phrases=PHRASES, score_threshold=SCORE_THRESHOLD))
    t_gen, gen_out = _timed_reps(lambda: gen.generate(chip), spec["reps"])
    return {
        "torch": torch.__version__,
        "image_processor": type(proc.image_processor).__name__,
        "geosam_preprocess_s": t_own, "sam3_processor_s": t_hf,
        "pixel_values_shape": list(hf.shape),
        "pixel_values_max_abs_diff": float(diff.max()),
        "pixel_values_mean_abs_diff": float(diff.mean()),
        "pixel_values_frac_over_1e-3": float((diff > 1e-3).float().mean()),
        "transformers_route_s": t_route, "transformers_route_masks": n_route,
        "geosam_text_generator_s": t_gen, "geosam_text_generator_masks": len(gen_out.masks),
    }


# ---------------------------------------------------------------------------
# driver side (the main venv)


def build_checkpoints(tmp: Path) -> dict[str, str]:
    """Tiny SAM 3 (1008 px), tiny SAM and random ViT-B SAM saved under ``tmp`` (the driver's torch)."""
    import torch
    from transformers import SamConfig, SamModel, SamProcessor, SamVisionConfig
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    sys.path.insert(0, str(ROOT))
    from tests._tiny_families import build_tiny_sam3
    from tests._tiny_sam import build_tiny_sam

    paths = {"sam3": build_tiny_sam3(tmp / "sam3", image_size=SAM3_INPUT_PX),
             "sam_tiny": build_tiny_sam(tmp / "sam_tiny")}
    torch.manual_seed(0)
    vitb = SamModel(SamConfig(vision_config=SamVisionConfig(initializer_range=0.02))).eval()
    vitb.save_pretrained(tmp / "vitb")
    SamProcessor(image_processor=SamImageProcessorPil()).save_pretrained(tmp / "vitb")
    paths["vitb"] = str(tmp / "vitb")
    return paths


def call_worker(python: str, mode: str, spec: dict[str, Any], tmp: Path, tag: str) -> dict[str, Any]:
    """Run this file under ``python`` in worker ``mode``; its JSON answer plus the process wall time."""
    spec_path, out_path = tmp / f"{tag}.spec.json", tmp / f"{tag}.out.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([python, __file__, "--worker", mode, str(spec_path), str(out_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"worker {mode} under {python} failed:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    result["process_wall_s"] = wall
    return result


def du_bytes(path: str | Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def torch_package_bytes(python: str) -> dict[str, int]:
    """Bytes of torch, torchvision, triton and the nvidia / cuda wheels in ``python``'s site-packages."""
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    sizes: dict[str, int] = {}
    for name in ("torch", "torchvision", "triton", "nvidia", "cuda"):
        p = Path(site) / name
        if p.exists():
            sizes[name] = du_bytes(p)
    return sizes


def measure_install(where: Path) -> dict[str, Any]:
    """Fresh venvs for options a and b (same runtime deps, geosam itself not installed): wall time and size."""
    out: dict[str, Any] = {}
    for opt, torch_pkgs in OPTIONS.items():
        venv = where / f"venv-{opt}"
        shutil.rmtree(venv, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", *torch_pkgs, *RUNTIME_DEPS],
                       check=True, capture_output=True)
        wall = time.perf_counter() - t0
        out[opt] = {"packages": [*torch_pkgs, "geosam runtime deps"], "install_wall_s": wall,
                    "venv_bytes": du_bytes(venv), "torch_bytes": torch_package_bytes(str(venv / "bin" / "python"))}
        shutil.rmtree(venv, ignore_errors=True)
    return out


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over every timed chip of every run of one venv."""

    def med(key: str) -> float:
        return statistics.median(t for r in runs for t in r[key])

    def med1(fn: Any) -> float:
        return statistics.median(fn(r) for r in runs)

    return {
        "torch": runs[0]["torch"], "threads": runs[0]["threads"],
        "text_s_per_chip": med("text_s"), "sam_tiny_s_per_chip": med("sam_tiny_s"),
        "vitb_encode_s_per_chip": med("vitb_encode_s"),
        "import_geosam_s": med1(lambda r: r["import_geosam_s"]),
        "import_geosam_models_s": med1(lambda r: r["import_models_s"]),
        "load_s": {k: med1(lambda r, k=k: r["load_s"][k]) for k in runs[0]["load_s"]},
        "process_wall_s": med1(lambda r: r["process_wall_s"]),
        "text_stage_s": {k: med1(lambda r, k=k: r["text_stage_s"][k]) for k in runs[0]["text_stage_s"]},
        "sam_tiny_stage_s": {k: med1(lambda r, k=k: r["sam_tiny_stage_s"][k]) for k in runs[0]["sam_tiny_stage_s"]},
        "masks": {"text": runs[0]["text_masks"], "sam_tiny": runs[0]["sam_tiny_masks"]},
    }


def compare_outputs(npz_a: Path, npz_b: Path) -> dict[str, Any]:
    """How far option b's outputs are from option a's on the same chip and weights."""
    import numpy as np

    a, b = np.load(npz_a), np.load(npz_b)
    out: dict[str, Any] = {}
    for key in ("sam3_pixel_values", "vitb_embedding"):
        out[f"{key}_max_abs_diff"] = float(np.abs(a[key] - b[key]).max()) if a[key].shape == b[key].shape else None
    for key in ("text_masks", "amg_masks"):
        same_shape = a[key].shape == b[key].shape
        out[f"{key}_counts"] = [len(a[key]), len(b[key])]
        out[f"{key}_pixels_differing"] = int((a[key] != b[key]).sum()) if same_shape else None
    return out


def cpu_has_amx() -> bool:
    try:
        return "amx" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def speed_runs(pythons: dict[str, str], spec: dict[str, Any], tmp: Path, n_runs: int) -> dict[str, list[dict[str, Any]]]:
    """``n_runs`` fresh worker processes per venv, alternating a, b, b, a, ..."""
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in pythons}
    for i in range(n_runs):
        for opt in (("a", "b") if i % 2 == 0 else ("b", "a")):
            tag = f"speed-{opt}-{i}"
            res = call_worker(pythons[opt], "speed", {**spec, "npz": str(tmp / f"{tag}.npz")}, tmp, tag)
            res["npz"] = str(tmp / f"{tag}.npz")
            runs[opt].append(res)
            print(f"run {i} option {opt} (torch {res['torch']}): text {statistics.median(res['text_s']):.3f} s, "
                  f"sam_tiny {statistics.median(res['sam_tiny_s']):.3f} s, "
                  f"vitb {statistics.median(res['vitb_encode_s']):.3f} s", flush=True)
    return runs


def _ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    keys = ("text_s_per_chip", "sam_tiny_s_per_chip", "vitb_encode_s_per_chip", "import_geosam_models_s",
            "process_wall_s")
    return {k: b[k] / a[k] for k in keys}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python-a", default=sys.executable,
                    help="option a's python (torch 2.13, no torchvision)")
    ap.add_argument("--python-b", default="/work/scratch-tv/bin/python",
                    help="option b's python (torch 2.14.1 + torchvision 0.29.1 + geosam's runtime deps)")
    ap.add_argument("--runs", type=int, default=2, help="fresh processes per venv (alternating)")
    ap.add_argument("--reps", type=int, default=3, help="timed chips of text and sam_tiny per process")
    ap.add_argument("--reps-vitb", type=int, default=1, help="timed ViT-B encodes per process (~40 s each)")
    ap.add_argument("--points-per-side", type=int, default=8, help="segment-everything grid of sam_tiny")
    ap.add_argument("--install-dir", default=None, help="measure fresh installs of both options here")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "torchvision.json"))
    args = ap.parse_args(argv)
    pythons = {"a": args.python_a, "b": args.python_b}
    with tempfile.TemporaryDirectory(prefix="geosam-tvbench-") as d:
        tmp = Path(d)
        spec: dict[str, Any] = {**build_checkpoints(tmp), "reps": args.reps, "reps_vitb": args.reps_vitb,
                                "points_per_side": args.points_per_side}
        runs = speed_runs(pythons, spec, tmp, args.runs)
        processor = call_worker(pythons["b"], "processor", spec, tmp, "processor")
        summary = {opt: _summary(r) for opt, r in runs.items()}
        outputs = compare_outputs(Path(runs["a"][0]["npz"]), Path(runs["b"][0]["npz"]))
    result: dict[str, Any] = {
        "cpu": f"{cpu_name()}, {os.cpu_count()} threads, AMX: {cpu_has_amx()}, no GPU",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "chip": f"{SCENE.name}, first {CHIP_PX} x {CHIP_PX} chip", "phrases": list(PHRASES),
        "runs_per_venv": args.runs, "timed_chips_per_run": args.reps, "timed_vitb_per_run": args.reps_vitb, "points_per_side": args.points_per_side,
        "options": {"a": "torch 2.13.0 (CPU wheel), no torchvision; geosam's own preprocessing",
                    "b": "torch 2.14.1 + torchvision 0.29.1 (the wheels the index serves: the CUDA 13 build)"},
        "speed": summary, "ratio_b_over_a": _ratios(summary["a"], summary["b"]),
        "outputs_b_vs_a": outputs,
        "processor_in_b": {k: (statistics.median(v) if isinstance(v, list) and k.endswith("_s") else v)
                           for k, v in processor.items()},
        "sizes": {opt: {"venv": p.rsplit("/bin/", 1)[0], "venv_bytes": du_bytes(p.rsplit("/bin/", 1)[0]),
                        "torch_bytes": torch_package_bytes(p)} for opt, p in pythons.items()},
        "runs": runs,
    }
    if args.install_dir:
        result["install"] = measure_install(Path(args.install_dir))
    out = Path(args.out)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    tmp_out.replace(out)
    print(json.dumps({k: result[k] for k in ("ratio_b_over_a", "outputs_b_vs_a")}, indent=2))


def _worker_main(mode: str, spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = worker_speed(spec) if mode == "speed" else worker_processor(spec)
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        _worker_main(*sys.argv[2:])
    else:
        main()
