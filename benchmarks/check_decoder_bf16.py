"""How far SAM's mask decoder with its attentions in bf16 moves segment-everything's masks from float32's (one check,
not a speed race): what moving the decoder's score and softmax kernels onto bf16 products (AMX tiles) would cost in
mask agreement, before anyone writes them.

transformers' own decoder (geosam's fast decoder off) behind geosam's float32 encoder, a full-size random ViT-B with
smooth, prompt-dependent masks (`bench_amg.build_sane_random_sam`), ``--grid`` x ``--grid`` points, SAM's thresholds,
NMS off (box_nms_thresh 1.0, as bench_amg's agreement pass), on ``--chips`` chips of ``data/banepa_predict.tif``. The
variant replaces every `SamAttention`'s attention (the two-way transformer's and the final one) by the same attention
on bf16 inputs with float32 sums, as bf16 products on AMX tiles run it: q, k and v rounded to bf16, the softmax's
numerators exp(s - max) rounded to bf16, their sum and the normalisation in float32. Agreement as bench_amg measures
it (`bench_amg.compare` chip by chip, pooled by `bench_amg.pooled`: masks matched at IoU >= 0.9 each way, the
smaller of the two fractions; ``geosam_*`` the variant's masks, ``pipeline_*`` the all-float32 ones). Writes ``--out``.

``--scopes``: which attentions go bf16: ``all`` (the variant above), ``two_way`` (the two-way transformer's layers:
their self-, token -> image and image -> token attentions, the bulk of a decode's score and softmax work) or ``final``
(only the final token -> image attention); one variant per scope (``decoder_bf16_attention``,
``decoder_bf16_two_way_attention``, ``decoder_bf16_final_attention``).

``--bf16-encoder``: also the same decoders behind geosam's bf16 encoder (its embeddings, the decoder still float32 or
with bf16 attentions as above), each against the all-float32 masks: the agreement a bf16 chip would have.

    python benchmarks/check_decoder_bf16.py --threads 2 --out benchmarks/results/decoder_bf16_attention.json
    python benchmarks/check_decoder_bf16.py --scopes two_way final --bf16-encoder --out .../decoder_bf16_split.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(t.dtype)


def bf16_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager SAM attention with bf16 inputs and float32 sums (see the module docstring)."""
    s = torch.matmul(_bf16(query), _bf16(key).transpose(2, 3)) * scaling
    if attention_mask is not None:
        s = s + attention_mask
    e = torch.exp(s - s.amax(-1, keepdim=True))
    weights = _bf16(e) / e.sum(-1, keepdim=True)
    return torch.matmul(weights, _bf16(value)).transpose(1, 2).contiguous(), weights


SCOPES = {"all": "decoder_bf16_attention", "two_way": "decoder_bf16_two_way_attention",
          "final": "decoder_bf16_final_attention"}


def in_scope(model, scope: str) -> set[int]:
    """ids of the `SamAttention` modules of ``model``'s mask decoder that ``scope`` puts in bf16."""
    t = model.mask_decoder.transformer
    final = {id(t.final_attn_token_to_image)}
    two_way = {id(m) for layer in t.layers for m in layer.modules() if type(m).__name__ == "SamAttention"}
    assert len(two_way) == 3 * len(t.layers)  # self, token -> image, image -> token per layer
    return {"all": two_way | final, "two_way": two_way, "final": final}[scope]


def main() -> None:
    import transformers.models.sam.modeling_sam as ms
    from _alternate import parse_and_set_up
    from _machine import machine
    from bench_amg import build_sane_random_sam, compare, load_chips
    from bench_amg import pooled as pool

    from geosam.models import load_model
    from geosam.models.bundle import SamBundle
    from geosam.segment import SamMaskGenerator

    class Bf16EncoderOnly(SamBundle):
        """A bundle whose encoder runs in its dtype (geosam's fast encoder takes it as an argument) and transformers'
        decoder in float32: no autocast around it."""

        def autocast(self) -> contextlib.AbstractContextManager:
            return contextlib.nullcontext()

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--chips", type=int, default=4, help="chips of the scene (max 4)")
    ap.add_argument("--bf16-encoder", action="store_true", help="also behind geosam's bf16 encoder")
    ap.add_argument("--scopes", nargs="+", choices=list(SCOPES), default=["all"],
                    help="which decoder attentions go bf16, one variant each")
    args = parse_and_set_up(ap, "decoder_bf16_attention.json")
    with tempfile.TemporaryDirectory() as tmp:
        build_sane_random_sam().save_pretrained(tmp)
        bundle = dataclasses.replace(load_model(tmp, device="cpu", dtype="float32"), fast_decoder=False)

    def generator(b: SamBundle) -> SamMaskGenerator:
        return SamMaskGenerator(b, points_per_side=args.grid, points_per_batch=64, pred_iou_thresh=0.88,
                                stability_score_thresh=0.95, box_nms_thresh=1.0)  # fmt: skip

    gen32 = generator(bundle)
    # name: (generator, ids of the decoder attentions in bf16)
    variants = {SCOPES[s]: (gen32, in_scope(bundle.model, s)) for s in args.scopes}
    if args.bf16_encoder:
        fields = {f.name: getattr(bundle, f.name) for f in dataclasses.fields(bundle)}
        gen16 = generator(Bf16EncoderOnly(**{**fields, "dtype": torch.bfloat16}))
        variants |= {"encoder_bf16": (gen16, set())}
        variants |= {f"encoder_bf16_{SCOPES[s]}": (gen16, in_scope(bundle.model, s)) for s in args.scopes}
    interface = ms.ALL_ATTENTION_FUNCTIONS
    real = interface.get_interface

    def chosen(bf16: set[int]):
        """An attention interface that runs the modules in ``bf16`` as `bf16_attention`, the others as transformers'
        own attention."""
        def get_interface(impl, default):
            stock = real(impl, default)
            return lambda module, *a, **kw: (bf16_attention if id(module) in bf16 else stock)(module, *a, **kw)

        return get_interface

    per_chip: dict[str, list[dict]] = {v: [] for v in variants}
    try:
        for i, chip in enumerate(load_chips(args.chips, 1024)):
            interface.get_interface = real
            ref = gen32.generate(chip).masks
            for name, (gen, bf16) in variants.items():
                t = time.perf_counter()
                interface.get_interface = chosen(bf16) if bf16 else real
                got = gen.generate(chip).masks
                # bench_amg's measure, the variant in the place of geosam's masks and all-float32 in the pipeline's
                per_chip[name].append({**compare([got], [ref]), "seconds": round(time.perf_counter() - t, 1)})
                print(f"chip {i} {name}: {json.dumps(per_chip[name][-1])}", flush=True)
    finally:
        interface.get_interface = real
    pooled = {v: pool(chips) for v, chips in per_chip.items()}  # as bench_amg pools them
    out = {**machine(args.threads, args.note), "grid": args.grid, "chips": per_chip, "pooled": pooled,
           "mask_agreement": {v: p["mask_agreement"] for v, p in pooled.items()}}  # fmt: skip
    print(json.dumps(out["mask_agreement"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
