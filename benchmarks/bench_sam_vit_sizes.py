"""SAM's ViT encoders by size on the CPU in bf16: geosam's path with its attention kernel (`_layer_mixed`) against
the path with torch's fused attention on widened q and k (`_layer`), which bf16 took on CPUs with AMX before the
kernel's AMX products took heads of any multiple of 16 numbers (ViT-H's heads are 80 wide).

Full-size random-weight ``SamModel`` encoders (ViT-B, ViT-L, ViT-H layouts, seed 0) loaded through
`geosam.models.load_model` (bf16, huge pages and allocator settings as a real run has them), one 1024 px chip of
``data/banepa_predict.tif``; per size the two paths alternate ``--rounds`` times in one process after a warm-up
(medians kept), and each path's embedding is compared with the float32 encoder's. Writes ``--out``.

Usage::

    python benchmarks/bench_sam_vit_sizes.py --sizes vit_b,vit_h --threads 2 --rounds 3 \\
        --out benchmarks/results/sam_vit_sizes.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZES = {  # SamVisionConfig fields (segment-anything's vit_b / vit_l / vit_h)
    "vit_b": {},
    "vit_l": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
              "global_attn_indexes": [5, 11, 17, 23]},
    "vit_h": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16,
              "global_attn_indexes": [7, 15, 23, 31]},
}  # fmt: skip


def save_random_sam(size: str, out: str) -> None:
    from transformers import SamConfig, SamModel, SamProcessor, SamVisionConfig
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    torch.manual_seed(0)
    model = SamModel(SamConfig(vision_config=SamVisionConfig(initializer_range=0.02, **SIZES[size]))).eval()
    model.save_pretrained(out)
    SamProcessor(image_processor=SamImageProcessorPil()).save_pretrained(out)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float((a.float() - b.float()).norm() / b.float().norm()), 7)


def main() -> None:
    from _alternate import alternate_patched, parse_and_set_up
    from _machine import machine
    from bench_amg import load_chips

    import geosam.models.fast_encoder as fe
    from geosam.models import encode, load_model, preprocess

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="vit_b,vit_h")
    args = parse_and_set_up(ap, "sam_vit_sizes.json")
    image = load_chips(1, 1024)[0].image
    kernel_path = fe._mixed_attention
    paths = {
        "kernel": kernel_path,
        "torch_flash": lambda device, dtype, head_dim: False,  # `_layer`: torch's attention on widened q and k
    }
    results: dict[str, object] = {}
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            save_random_sam(size, tmp)
            f32 = load_model(tmp, device="cpu", dtype="float32")
            reference = encode(f32, preprocess(f32, [image])[0]).float()
            del f32
            bundle = load_model(tmp, device="cpu", dtype="bfloat16")
        pixels = preprocess(bundle, [image])[0]
        attn = bundle.model.vision_encoder.layers[0].attn
        head_dim = attn.qkv.in_features // attn.num_attention_heads
        seconds, embeddings = alternate_patched(fe, "_mixed_attention", paths,
                                                lambda bundle=bundle, pixels=pixels: encode(bundle, pixels), args.rounds)
        distance = {name: _relative(emb, reference) for name, emb in embeddings.items()}
        med = {name: statistics.median(v) for name, v in seconds.items()}
        results[size] = {
            "head_dim": head_dim,
            "kernel_takes_it": bool(kernel_path(torch.device("cpu"), torch.bfloat16, head_dim)),
            "seconds": seconds,
            "median_s": med,
            "kernel_over_torch_flash": round(med["kernel"] / med["torch_flash"], 3),
            "relative_distance_to_float32": distance,
        }
        print(size, json.dumps(results[size]), flush=True)
        del bundle
    out = {**machine(args.threads, args.note), "dtype": "bfloat16", "chip": "data/banepa_predict.tif, 1024 px",
           "rounds": args.rounds, "sizes": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
