"""Two settings of the attention kernel's windowed layers, each on and off, alternating in one process: whole encodes
of SAM's ViT-B / ViT-H and SAM 2's Hiera-B+ / Hiera-L, or (``--layers``) windowed layers alone (those models' and
SAM 3's ViT's shapes at 1024 / 1008 px, `LAYERS`). The outputs are the same bits either way (checked every run).

``--setting prefetch`` (``geosam_attention512_prefetch``): the kernel runs a windowed layer as (window, head) tasks,
each packing its window's keys and values and copying its queries from the layer's qkv projection; a window's rows
lie a map row apart, which the hardware's prefetchers do not follow, so each task waited on L3 or memory for them.
With the prefetch each task asks for the next task's q, k and v rows while its own products and softmax run.

``--setting fused_windows`` (``geosam_attention512_fused_windows``): in the AMX mode, windows without relative
tables (SAM 2's, SAM 3's) take the fused pass (each 32 x 32 block's scores into the rows' maxima as they leave the
tiles) at any width, not only maps of 32k columns; off, a window's rows of 24 (SAM 3) or 8 (Hiera) scores ran the
separate pass, with a masked store per row.

``--setting sam3_one_call`` (``--layers`` only: SAM 3's windowed layer): the nine windows of a SAM 3 ViT layer as
one map of the windows stacked (one call: the windowed tasks, as `geosam.models.fast_sam3_vit` runs bf16 now) or one
call per window (a whole map of 576 tokens each, as before and as float32 still runs).

Full-size random-weight models (``bench_sam_vit_sizes.save_random_sam``, loaded through `geosam.models.load_model`;
``bench_sam2_encoder.build``; ``sam3``: SAM 3's backbone, `geosam.models.sam3.vision_features`, of
``bench_sam3._save_model``'s model on a 1008 px chip), one 1024 px input; per model the two settings alternate ``--rounds`` times in one
process after a warm-up (medians kept); ``--layers``: random bf16 or float32 projections, many more rounds in the
same time. Writes ``--out``.

Usage::

    python benchmarks/bench_window_attention.py --setting prefetch --models vit_b,vit_h,hiera_base_plus,hiera_large \\
        --dtype bfloat16 --threads 2 --rounds 3 --out benchmarks/results/window_prefetch.json
    python benchmarks/bench_window_attention.py --setting fused_windows --layers --threads 1 --rounds 15 \\
        --out window_fused_layers.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


#: windowed layers at 1024 px (SAM 3: 1008): (map side, heads, head size, window, relative tables)
LAYERS = {
    "vit_b": (64, 12, 64, 14, True),
    "vit_h": (64, 16, 80, 14, True),
    "hiera_large_stage1": (256, 2, 72, 8, False),
    "hiera_large_stage2": (128, 4, 72, 4, False),
    "hiera_large_stage3": (64, 8, 72, 16, False),
    "hiera_large_stage4": (32, 16, 72, 8, False),
    "hiera_base_plus_stage3": (64, 8, 56, 14, False),
    "sam3_vit": (72, 16, 64, 24, False),
    "sam3_vit_global": (72, 16, 64, 0, False),  # a whole map (window 0): 72 columns, not a multiple of 32
}


def _layer(name: str, dtype: torch.dtype) -> Callable[[], object]:
    """One windowed layer's attention of `LAYERS`' ``name`` on a random projection, as a callable."""
    from geosam.models import cpu_attention
    from geosam.models.cpu_kernels import transposed_tables

    side, heads, d, window, rel = LAYERS[name]
    g = torch.Generator().manual_seed(side + d)
    qkv = torch.randn((side, side, 3 * heads * d), generator=g).to(dtype)
    bias = torch.randn(3 * heads * d, generator=g).to(dtype)
    tables = [torch.randn((window or side, window or side, d), generator=g) * 0.1 for _ in range(2)]
    tables_t = transposed_tables(*tables) if rel else None
    bf16 = dtype == torch.bfloat16

    # SAM 3's windows stacked, as fast_sam3_vit has them (SAM 2's and SAM's windows stay on the map, as their encoders
    # give the kernel the whole map's projection)
    stacked = name.startswith("sam3") and window > 0 and side % window == 0
    if stacked:
        nwin, n, c3 = (side // window) ** 2, window * window, 3 * heads * d
        qkv = (
            qkv.view(side // window, window, side // window, window, c3)
            .transpose(1, 2)
            .reshape(nwin * window, window, c3)
        )

    def run() -> torch.Tensor:
        out = torch.empty((*qkv.shape[:2], heads * d), dtype=dtype)
        if stacked and not ONE_CALL[0]:  # window by window, each a whole map of n tokens
            ok = all(cpu_attention.attention(qkv[w * window:(w + 1) * window].view(1, n, c3), heads, d**-0.5, None,
                                             out[w * window:(w + 1) * window].view(1, n, -1), 0, None, bf16=bf16)
                     for w in range(nwin))  # fmt: skip
        else:
            ok = cpu_attention.attention(qkv, heads, d**-0.5, tables_t, out, window, bias, bf16=bf16)
        if not ok:
            raise SystemExit(f"the kernel does not take {name} in {dtype} here")
        return out

    return run


#: ``--setting sam3_one_call``: whether `_layer` runs windows without tables as one call (the windowed tasks) or one
#: call per window
ONE_CALL = [True]


def _encoder(name: str, dtype: torch.dtype) -> Callable[[], object]:
    """One 1024 px encode of the named model in ``dtype``, as a callable."""
    from bench_amg import load_chips
    from bench_sam2_encoder import build
    from bench_sam_vit_sizes import save_random_sam

    from geosam.models import encode, load_model, preprocess

    if name == "sam3":  # the backbone (ViT and FPN) of a full-size random SAM 3 on a 1008 px chip
        from bench_sam3 import _save_model

        from geosam.models.sam3 import vision_features

        with tempfile.TemporaryDirectory() as tmp:
            _save_model(tmp)
            sam3 = load_model(tmp, device="cpu", dtype=str(dtype).removeprefix("torch."))
        pv = preprocess(sam3, [load_chips(1, 1024)[0].image])[0]
        return lambda: vision_features(sam3, pv)
    if name.startswith("hiera"):
        import geosam.models.fast_hiera as fh

        model = build(name)
        x = torch.randn((1, 3, 1024, 1024), generator=torch.Generator().manual_seed(0))
        return lambda: fh.fast_sam2_embeddings(model, x, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        save_random_sam(name, tmp)
        bundle = load_model(tmp, device="cpu", dtype=str(dtype).removeprefix("torch."))
    pixels = preprocess(bundle, [load_chips(1, 1024)[0].image])[0]
    return lambda: encode(bundle, pixels)


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if hasattr(a, "to_tuple"):  # transformers' ModelOutput
        return _same(a.to_tuple(), b.to_tuple())  # type: ignore[attr-defined]
    return all(_same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[call-overload]


def main() -> None:
    from _alternate import alternate, parse_and_set_up
    from _machine import machine

    from geosam.models import cpu_attention

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", choices=["prefetch", "fused_windows", "sam3_one_call"], default="prefetch")
    ap.add_argument("--models", default="vit_b,vit_h,hiera_base_plus,hiera_large")
    ap.add_argument("--layers", action="store_true", help="the windowed layers alone (LAYERS), not whole encodes")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parse_and_set_up(ap, "window_attention.json")
    dtype = getattr(torch, args.dtype)
    lib = cpu_attention._library()
    if lib is None:
        raise SystemExit("the attention kernel is not in use here: nothing to compare")
    if args.setting == "sam3_one_call":
        if not args.layers:
            raise SystemExit("--setting sam3_one_call compares layers (--layers)")
        args.models = "sam3_vit"

        def switch(on: int) -> None:
            ONE_CALL[0] = bool(on)
    else:
        switch = getattr(lib, f"geosam_attention512_{args.setting}")
    setups = {"without": lambda: switch(0), "with": lambda: switch(1)}
    results: dict[str, object] = {}
    names = args.models.split(",") if not args.layers or args.setting == "sam3_one_call" else list(LAYERS)
    for name in names:
        if args.layers and dtype == torch.float32 and LAYERS[name][2] % 16:
            continue  # float32 heads are a multiple of 16
        run = _layer(name, dtype) if args.layers else _encoder(name, dtype)
        try:
            seconds, outs = alternate(setups, run, args.rounds)
        finally:
            switch(1)
        med = {v: round(statistics.median(s), 4) for v, s in seconds.items()}
        results[name] = {"seconds": seconds, "median_s": med, "with_over_without": round(med["with"] / med["without"], 3),
                         "same_bits": _same(outs["with"], outs["without"])}  # fmt: skip
        print(name, json.dumps(results[name]), flush=True)
        del run
    out = {**machine(args.threads, args.note), "setting": args.setting, "dtype": args.dtype,
           "amx": cpu_attention.amx_available(),
           "rounds": args.rounds, "layers" if args.layers else "models": results}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
