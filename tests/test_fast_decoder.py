"""geosam.models.fast_decoder: same logits / IoU as transformers' stock SAM mask decoder."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from geosam import models as gm
from geosam.models.compile import use_fast_decoder
from geosam.models.fast_decoder import fast_decode, fast_decoder_supported
from tests._tiny_sam import seeded_sam_model


def _sam_size_model():
    """A SamModel with SAM's real prompt encoder / mask decoder sizes (hidden 256), random weights.

    The vision encoder is tiny: only the decoder is exercised, on a random embedding.
    """
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    vision = SamVisionConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        mlp_dim=64,
        output_channels=256,
        global_attn_indexes=[0],
        num_pos_feats=128,
    )
    config = SamConfig(
        vision_config=vision, prompt_encoder_config=SamPromptEncoderConfig(), mask_decoder_config=SamMaskDecoderConfig()
    )
    gen = torch.Generator().manual_seed(1)
    model = seeded_sam_model(config, seed=1)
    with torch.no_grad():  # the default init is nearly degenerate: make the decoder's weights matter
        for p in model.mask_decoder.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        for p in model.prompt_encoder.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def sam_size_decoding(seed: int, prompts: int = 9) -> tuple[gm.SamBundle, torch.Tensor, torch.Tensor]:
    """SAM's decoder sizes with the fast decoder on: the bundle, a random (1, 256, 64, 64) embedding (``seed``) and
    ``prompts`` random points (``seed + 1``), for the tests that decode with and without a C kernel."""
    bundle = gm.SamBundle(
        model=_sam_size_model(), processor=None, device=torch.device("cpu"), dtype=torch.float32, name="random"
    )
    bundle = dataclasses.replace(bundle, fast_decoder=True)
    emb = torch.randn((1, 256, 64, 64), generator=torch.Generator().manual_seed(seed))
    pts = torch.rand((prompts, 2), generator=torch.Generator().manual_seed(seed + 1)) * bundle.input_size
    return bundle, emb, pts


def assert_same_decoding(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor],
                         rtol: float = 1e-4, clear: float = 1e-3) -> None:
    """Masks (logits) within ``rtol`` of the largest, IoUs within 1e-5, and the sign of every logit larger than
    ``clear`` of the largest the same."""
    (ml, il), (tl, ti) = got, want
    scale = float(tl.abs().max())
    torch.testing.assert_close(ml, tl, rtol=rtol, atol=rtol * scale)
    torch.testing.assert_close(il, ti, rtol=1e-5, atol=1e-5)
    keep = tl.abs() > clear * scale
    assert torch.equal((ml > 0)[keep], (tl > 0)[keep])


@pytest.fixture(scope="module")
def sam_size() -> tuple[gm.SamBundle, torch.Tensor]:
    bundle = gm.SamBundle(
        model=_sam_size_model(), processor=None, device=torch.device("cpu"), dtype=torch.float32, name="random"
    )
    emb = torch.randn((1, 256, 64, 64), generator=torch.Generator().manual_seed(2))
    return bundle, emb


@pytest.fixture(scope="module")
def tiny(tiny_sam_dir: str) -> tuple[gm.SamBundle, torch.Tensor]:
    bundle = gm.load_model(tiny_sam_dir, device="cpu", dtype="float32")
    rng = torch.Generator().manual_seed(3)
    pixels = torch.rand((1, 3, 1024, 1024), generator=rng) * 4 - 2
    return bundle, gm.encode(bundle, pixels)


def _close(fast: tuple[torch.Tensor, torch.Tensor], stock: tuple[torch.Tensor, torch.Tensor]) -> None:
    (fl, fi), (sl, si) = fast, stock
    assert fl.shape == sl.shape and fi.shape == si.shape
    assert fl.dtype == sl.dtype == torch.float32
    # relative to the magnitude: the tiny model's logits are ~1e-4
    assert float((fl - sl).abs().max()) <= 1e-4 * float(sl.abs().max()) + 1e-7
    assert float((fi - si).abs().max()) <= 1e-4 * float(si.abs().max()) + 1e-7


def _cases(gen: torch.Generator, size: int):
    pts = torch.rand((5, 2), generator=gen) * size
    labels = torch.tensor([1, 0, 1, 1, 0])
    multi = torch.rand((4, 3, 2), generator=gen) * size
    multi_labels = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 0], [1, 0, 0]])
    xy = torch.rand((3, 2), generator=gen) * size * 0.5
    boxes = torch.cat([xy, xy + torch.rand((3, 2), generator=gen) * size * 0.5 + 8], dim=1)
    return [
        ("point", gm.decode_points, {"points": pts[:1]}),
        ("points", gm.decode_points, {"points": pts, "labels": labels}),
        ("multi_points", gm.decode, {"points": multi, "labels": multi_labels}),
        ("boxes", gm.decode_boxes, {"boxes": boxes}),
        ("box", gm.decode_boxes, {"boxes": boxes[:1]}),
        ("points_and_boxes", gm.decode, {"points": multi[:3], "labels": multi_labels[:3], "boxes": boxes}),
    ]


@pytest.mark.parametrize("which", ["tiny", "sam_size"])
@pytest.mark.parametrize("multimask", [True, False])
def test_fast_decoder_matches_stock(which: str, multimask: bool, request: pytest.FixtureRequest) -> None:
    bundle, emb = request.getfixturevalue(which)
    fast = dataclasses.replace(bundle, fast_decoder=True)
    stock = dataclasses.replace(bundle, fast_decoder=False)
    assert use_fast_decoder(fast) and not use_fast_decoder(stock)
    for name, fn, kwargs in _cases(torch.Generator().manual_seed(4), bundle.input_size):
        out_fast = fn(fast, emb, multimask=multimask, **kwargs)
        out_stock = fn(stock, emb, multimask=multimask, **kwargs)
        assert out_fast[0].shape[1] == (3 if multimask else 1), name
        _close(out_fast, out_stock)


def test_fast_decode_direct_and_per_prompt_dense(sam_size) -> None:
    """fast_decode itself, with a shared (1, ...) and a per-prompt (N, ...) dense embedding."""
    bundle, emb = sam_size
    model = bundle.model
    pts = torch.tensor([[[[100.0, 200.0]], [[900.0, 10.0]], [[512.0, 512.0]]]])
    lab = torch.ones((1, 3, 1), dtype=torch.long)
    with torch.inference_mode():
        ref = model(image_embeddings=emb, input_points=pts, input_labels=lab, multimask_output=True)
        sparse, dense = model.prompt_encoder(input_points=pts, input_labels=lab, input_boxes=None, input_masks=None)
        out1 = fast_decode(model, emb, sparse[0], dense, True)
        outn = fast_decode(model, emb, sparse[0], dense.expand(3, -1, -1, -1), True)
    for out in (out1, outn):
        _close(out, (ref.pred_masks[0], ref.iou_scores[0]))


def test_upscaling_from_the_shared_image_side(sam_size, monkeypatch) -> None:
    """The first upscaling product unrolled to the shared image side (CPU float32, one dense embedding) gives the
    explicit product's masks; the shared part is reused across calls with the same cache and not for another image."""
    from geosam.models import fast_transformer as fd

    bundle, emb = sam_size
    model = bundle.model
    gen = torch.Generator().manual_seed(7)
    pts = torch.rand((1, 6, 1, 2), generator=gen) * 1024
    lab = torch.ones((1, 6, 1), dtype=torch.long)
    built = []
    orig = fd._Conv1FromSharedImage.__init__

    def spy(self, *args):
        orig(self, *args)
        built.append(self.shared)

    monkeypatch.setattr(fd._Conv1FromSharedImage, "__init__", spy)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(input_points=pts, input_labels=lab, input_boxes=None, input_masks=None)
        explicit = fast_decode(model, emb, sparse[0], dense.expand(6, -1, -1, -1), True)  # per-prompt dense: explicit
        assert not built
        cache: dict = {}
        parts = [fast_decode(model, emb, sparse[0][s : s + 2], dense, True, cache=cache) for s in (0, 2, 4)]
        assert len(built) == 3 and built[0] is built[1] is built[2]  # one shared product for the three calls
        unrolled = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        # another image with the same cache: its own shared product
        emb2 = torch.randn(emb.shape, generator=gen)
        other = fast_decode(model, emb2, sparse[0][:2], dense, True, cache=cache)
        assert built[-1] is not built[0]
        fresh = fast_decode(model, emb2, sparse[0][:2], dense, True, cache={})
    assert torch.isfinite(unrolled[0]).all()
    _close(unrolled, explicit)
    assert torch.equal(other[0], fresh[0]) and torch.equal(other[1], fresh[1])


@pytest.mark.parametrize("tile", [1024, 1000])
def test_last_image_side_fused_with_the_final_attention(sam_size, monkeypatch, tile: int) -> None:
    """CPU float32 with one shared image side: the last layer's image side is attended to tile by tile (a running
    softmax) and never written (a call of fewer prompts than SHARED_PROJECTION_MIN_PROMPTS, no cache); with more
    prompts neither image side is written (`geosam.models.fast_final`: the norms' statistics and the final attention
    from the attention weights, x0's projections made once per image). The same IoUs and masks as the two-step
    path, with tiles that divide the 4096 positions or leave a remainder (1000: 4 x 1000 + 96)."""
    from geosam.models import fast_transformer as fd
    from geosam.models import fast_twoway

    bundle, emb = sam_size
    model = bundle.model
    monkeypatch.setattr(fast_twoway, "CPU_TILE_POSITIONS", tile)
    gen = torch.Generator().manual_seed(11)
    pts = torch.rand((1, 5, 1, 2), generator=gen) * 1024
    lab = torch.ones((1, 5, 1), dtype=torch.long)
    calls = {"image_side": 0, "fused": 0, "final_projections": 0, "unwritten": 0}
    originals = {
        "image_side": fd._image_side,
        "fused": fd._final_image_side_attention,
        "final_projections": fd.final_projections,
        "unwritten": fd.factored_final_attention,
    }
    names = {
        "image_side": "_image_side",
        "fused": "_final_image_side_attention",
        "final_projections": "final_projections",
        "unwritten": "factored_final_attention",
    }

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    for name, fn in originals.items():
        monkeypatch.setattr(fd, names[name], count(name, fn))
    with torch.inference_mode():
        ref = model(image_embeddings=emb, input_points=pts, input_labels=lab, multimask_output=True)
        sparse, dense = model.prompt_encoder(input_points=pts, input_labels=lab, input_boxes=None, input_masks=None)
        two_step = fast_decode(model, emb, sparse[0], dense.expand(5, -1, -1, -1), True)  # per-prompt dense
        assert calls == {"image_side": 2, "fused": 0, "final_projections": 0, "unwritten": 0}
        fused = fast_decode(model, emb, sparse[0][:2], dense, True)
        # layer 0's image side, then layer 1's fused with the attention
        assert calls == {"image_side": 3, "fused": 1, "final_projections": 0, "unwritten": 0}
        got = fast_decode(model, emb, sparse[0], dense, True)
        assert calls == {"image_side": 3, "fused": 1, "final_projections": 1, "unwritten": 1}
        cache: dict = {}
        parts = [fast_decode(model, emb, sparse[0][s : s + 2], dense, True, cache=cache) for s in (0, 2, 4)]
    assert calls["image_side"] == 3 and calls["unwritten"] == 4
    assert calls["final_projections"] == 2  # once for the three calls sharing the cache
    assert torch.isfinite(got[0]).all() and torch.isfinite(fused[0]).all()
    _close(fused, (two_step[0][:2], two_step[1][:2]))
    _close(got, two_step)
    _close((torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])), two_step)
    _close(got, (ref.pred_masks[0], ref.iou_scores[0]))


def test_first_layer_attends_to_an_image_side_projected_once(sam_size, monkeypatch) -> None:
    """One image side for all prompts: the first layer's keys, values and queries are projected once (kept in the
    cache across calls on one image, not reused for another) and, on the CPU in float32, the second layer runs
    factored against the first's image side (`geosam.models.fast_factored`); both give the stock decoder's IoUs
    and masks, in float32 on the CPU and in float64 (the plain path, not factored); a call of fewer than
    SHARED_PROJECTION_MIN_PROMPTS prompts without a cache keeps the projections on the tokens."""
    from geosam.models import fast_transformer as fd
    from geosam.models.fast_twoway import SHARED_PROJECTION_MIN_PROMPTS

    bundle, emb = sam_size
    model = bundle.model
    made = []
    orig = fd.shared_projections

    def spy(*a):
        made.append(orig(*a))
        return made[-1]

    monkeypatch.setattr(fd, "shared_projections", spy)
    factored = []
    orig_factored = fd.factored_token_to_image

    def spy_factored(*a):
        factored.append(a[1].shape[0])
        return orig_factored(*a)

    monkeypatch.setattr(fd, "factored_token_to_image", spy_factored)
    gen = torch.Generator().manual_seed(13)
    pts = torch.rand((1, 6, 1, 2), generator=gen) * 1024
    lab = torch.tensor([[[1], [0], [1], [1], [1], [0]]])
    with torch.inference_mode():
        ref = model(image_embeddings=emb, input_points=pts, input_labels=lab, multimask_output=True)
        stock = (ref.pred_masks[0], ref.iou_scores[0])
        sparse, dense = model.prompt_encoder(input_points=pts, input_labels=lab, input_boxes=None, input_masks=None)
        few = SHARED_PROJECTION_MIN_PROMPTS - 1
        small = fast_decode(model, emb, sparse[0][:few], dense, True)
        assert not made
        whole = fast_decode(model, emb, sparse[0], dense, True)
        assert len(made) == 1
        cache: dict = {}
        parts = [fast_decode(model, emb, sparse[0][s : s + 2], dense, True, cache=cache) for s in (0, 2, 4)]
        assert len(made) == 2  # once for the three calls sharing the cache
        emb2 = torch.randn(emb.shape, generator=gen)
        fast_decode(model, emb2, sparse[0][:2], dense, True, cache=cache)
        assert len(made) == 3  # another image: its own projections

        model64 = _sam_size_model().double()
        ref64 = model64(
            image_embeddings=emb.double(), input_points=pts.double(), input_labels=lab, multimask_output=True
        )
        sp64, de64 = model64.prompt_encoder(
            input_points=pts.double(), input_labels=lab, input_boxes=None, input_masks=None
        )
        got64 = fast_decode(model64, emb.double(), sp64[0], de64, True)
    assert len(made) == 4
    # the second layer factored against the first's image side wherever that is shared (CPU float32), not in float64
    assert factored == [6, 2, 2, 2, 2]
    assert made[0][0].shape == (8, 16, 4096) and made[0][1].shape == (8, 4096, 16)  # heads x 16 dims x positions
    _close((small[0], small[1]), (stock[0][:few], stock[1][:few]))
    for got in (whole, (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))):
        assert torch.isfinite(got[0]).all()
        _close(got, stock)
    # float64: the untiled image side (the softmaxes still run in float32, as in every dtype)
    _close((got64[0].float(), got64[1].float()), (ref64.pred_masks[0].float(), ref64.iou_scores[0].float()))


def test_default_choice(sam_size) -> None:
    bundle, _ = sam_size
    assert bundle.fast_decoder is None
    assert use_fast_decoder(bundle)  # float32 on the CPU
    assert use_fast_decoder(dataclasses.replace(bundle, dtype=torch.bfloat16))  # CPU: exact beats bf16 stock
    assert not use_fast_decoder(dataclasses.replace(bundle, dtype=torch.bfloat16, fast_decoder=False))
    assert use_fast_decoder(dataclasses.replace(bundle, dtype=torch.bfloat16, fast_decoder=True))
    # CUDA: float32 decoding (the masks of float32) in every dtype; other devices keep the stock decoder
    cuda = dataclasses.replace(bundle, device=torch.device("cuda"), dtype=torch.float16)
    assert use_fast_decoder(cuda) and use_fast_decoder(dataclasses.replace(cuda, dtype=torch.float32))
    assert not use_fast_decoder(dataclasses.replace(cuda, fast_decoder=False))
    assert not use_fast_decoder(dataclasses.replace(bundle, device=torch.device("mps")))
    assert not fast_decoder_supported(object())
    assert not use_fast_decoder(dataclasses.replace(bundle, model=torch.nn.Linear(2, 2), fast_decoder=True))


def test_fast_decoder_forced_under_bf16_gives_float32_results(sam_size) -> None:
    """Under the bf16 dtype the fast decoder runs in float32: the stock float32 decoder's results, but for the
    upscaling's products, in bf16 where the CPU has AMX or AVX-512 BF16 (`cpu_decoder.bf16_products`): there the masks are
    float32's to that rounding (within 2e-2 of their scale, the same sign where clear), the IoUs float32's."""
    from geosam.models import cpu_decoder

    bundle, emb = sam_size
    pts = torch.tensor([[10.0, 20.0], [700.0, 300.0], [500.0, 900.0]])
    forced = dataclasses.replace(bundle, dtype=torch.bfloat16, fast_decoder=True)
    stock32 = dataclasses.replace(bundle, fast_decoder=False)
    fast, stock = gm.decode_points(forced, emb.bfloat16(), pts), gm.decode_points(stock32, emb.bfloat16().float(), pts)
    if not cpu_decoder.bf16_products():
        _close(fast, stock)
        return
    (fl, fi), (sl, si) = fast, stock
    assert fl.dtype == torch.float32
    assert float((fi - si).abs().max()) <= 1e-4 * float(si.abs().max()) + 1e-7
    scale = float(sl.abs().max())
    assert float((fl - sl).abs().max()) <= 2e-2 * scale
    clear = sl.abs() > 2e-2 * scale
    assert torch.equal((fl > 0)[clear], (sl > 0)[clear])


@pytest.mark.parametrize("fast_path", [True, False])
def test_iou_floor_skips_prompts_without_a_mask_above_it(sam_size, fast_path: bool) -> None:
    """Prompts none of whose masks has IoU above the floor come back -inf; the others exactly as without a floor."""
    bundle, emb = sam_size
    b = dataclasses.replace(bundle, fast_decoder=fast_path)
    pts = torch.rand((12, 2), generator=torch.Generator().manual_seed(9)) * bundle.input_size
    full, iou = gm.decode_points(b, emb, pts)
    floor = float(iou.max(dim=1).values.median())  # about half the prompts have a mask above it
    low, iou2 = gm.decode_points(b, emb, pts, iou_floor=floor)
    assert torch.equal(iou, iou2)
    above = (iou > floor).any(dim=1)
    assert 0 < int(above.sum()) < len(pts)
    assert torch.equal(low[above], full[above])
    assert bool(torch.isneginf(low[~above]).all())


@pytest.mark.parametrize(("tile", "onednn"), [(100, True), (4096, True), (100, False)])
def test_tiles_and_torch_products_match_stock(sam_size, monkeypatch, tile: int, onednn: bool) -> None:
    """The per-position steps tile by tile (an uneven last tile) or whole, through oneDNN or torch: stock results."""
    from geosam.models import fast_decoder, fast_twoway

    bundle, emb = sam_size
    for module in (fast_twoway, fast_decoder):  # the image side's tiles, the upscaling's bands
        monkeypatch.setattr(module, "CPU_TILE_POSITIONS", tile)
    monkeypatch.setenv("GEOSAM_ONEDNN_LINEAR", "1" if onednn else "0")
    pts = torch.rand((5, 2), generator=torch.Generator().manual_seed(11)) * bundle.input_size
    fast = gm.decode_points(dataclasses.replace(bundle, fast_decoder=True), emb, pts)
    _close(fast, gm.decode_points(dataclasses.replace(bundle, fast_decoder=False), emb, pts))


def test_upscaling_several_prompts_at_a_time_equals_one_at_a_time(sam_size):
    """The upscaling's two paths (one prompt at a time with the gather, the CPU's; all prompts at once with the
    7-d shuffle, other devices') give the same masks, also when only some prompts are computed."""
    from geosam.models.fast_decoder import _upscale_and_predict

    bundle, _ = sam_size
    dec = bundle.model.mask_decoder
    gen = torch.Generator().manual_seed(4)
    x = torch.randn((5, 64, 64, 256), generator=gen)
    hyper = torch.randn((5, 3, 32), generator=gen)
    with torch.inference_mode():
        one = _upscale_and_predict(dec, x, hyper, chunk=1, rows=[0, 2, 3])
        several = _upscale_and_predict(dec, x, hyper, chunk=5, rows=[0, 2, 3])
    assert one.shape == several.shape == (5, 3, 256, 256)
    assert torch.isinf(one[[1, 4]]).all() and torch.isinf(several[[1, 4]]).all()
    torch.testing.assert_close(one[[0, 2, 3]], several[[0, 2, 3]], rtol=1e-4, atol=1e-4)


def test_chunks_write_into_one_batch_tensor(sam_size, monkeypatch: pytest.MonkeyPatch, count_calls) -> None:
    """A batch over several CPU chunks (the last one partial; chunks of 4 prompts here instead of
    `FAST_DECODER_CPU_CHUNK`'s 32, so that the stock decoder's reference stays quick) gives the stock masks;
    `fast_decode` writes into the ``out`` it is given (a chunk's slice of the batch's masks) and returns it."""
    import geosam.models.fast_decoder as fdec
    from geosam.models import runtime

    monkeypatch.setattr(runtime, "FAST_DECODER_CPU_CHUNK", 4)
    bundle, emb = sam_size
    n = 2 * 4 + 3
    pts = torch.rand((n, 2), generator=torch.Generator().manual_seed(12)) * bundle.input_size
    calls = count_calls(fdec, "fast_decode")
    fast = gm.decode_points(dataclasses.replace(bundle, fast_decoder=True), emb, pts, multimask=True)
    assert len(calls) == 3  # 4 + 4 + 3 prompts
    _close(fast, gm.decode_points(dataclasses.replace(bundle, fast_decoder=False), emb, pts, multimask=True))
    model = bundle.model
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(
            input_points=torch.tensor([[[[100.0, 200.0]], [[900.0, 10.0]]]]),
            input_labels=torch.ones((1, 2, 1), dtype=torch.long), input_boxes=None, input_masks=None,
        )  # fmt: skip
        buf = torch.full((5, 3, 256, 256), float("nan"))
        got, _ = fast_decode(model, emb, sparse[0], dense, True, out=buf[1:3])
        ref, _ = fast_decode(model, emb, sparse[0], dense, True)
    assert got.data_ptr() == buf[1:3].data_ptr()
    assert torch.equal(buf[1:3], ref) and bool(buf[[0, 3, 4]].isnan().all())


def test_a_cache_kept_across_calls_computes_the_image_side_once(sam_size, count_calls) -> None:
    """`decode`'s ``cache`` kept by the caller across batches on one image (as segment-everything's crops keep it):
    the image side's shared projections are made once, not once per call, the masks and IoUs are those of calls
    without it, the cache holds the image's tensors while they are its key (so that no later tensor can take their
    address and be mistaken for them), and another image in the same cache gets its own results."""
    from geosam.models import fast_transformer as fd

    bundle, emb = sam_size
    made = count_calls(fd, "final_projections")
    pts = torch.rand((21, 2), generator=torch.Generator().manual_seed(14)) * bundle.input_size
    batches = [pts[:9], pts[9:]]
    fresh = [gm.decode_points(bundle, emb, b, multimask=True) for b in batches]
    assert len(made) == 2  # once per call without a cache (its chunks share one)
    cache: dict = {}
    kept = [gm.decode_points(bundle, emb, b, multimask=True, cache=cache) for b in batches]
    assert len(made) == 3  # once for both calls
    for a, b in zip(fresh, kept):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert any(t is emb for t in cache["tensors"])
    other = emb * 1.5
    got = gm.decode_points(bundle, other, batches[0], multimask=True, cache=cache)
    want = gm.decode_points(bundle, other, batches[0], multimask=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert any(t is other for t in cache["tensors"]) and not any(t is emb for t in cache["tensors"])


def test_a_cache_kept_across_calls_computes_the_image_side_once_from_bf16_embeddings(sam_size, count_calls) -> None:
    """bf16 embeddings (the bf16 dtype's encoder gives them): the decoder runs on their float32 conversion, made once
    per image in the caller's cache, so the batches on one image share the image side's projections as for float32
    embeddings (converted anew each call, every batch projected it again); the masks and IoUs are those of calls
    without a cache, and another image in the same cache gets its own."""
    from geosam.models import fast_transformer as fd

    bundle, emb = sam_size
    low = emb.to(torch.bfloat16)
    made = count_calls(fd, "final_projections")
    pts = torch.rand((21, 2), generator=torch.Generator().manual_seed(15)) * bundle.input_size
    batches = [pts[:9], pts[9:]]
    fresh = [gm.decode_points(bundle, low, b, multimask=True) for b in batches]
    assert len(made) == 2
    cache: dict = {}
    kept = [gm.decode_points(bundle, low, b, multimask=True, cache=cache) for b in batches]
    assert len(made) == 3  # once for both calls
    for a, b in zip(fresh, kept):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    other = (emb * 1.5).to(torch.bfloat16)
    got = gm.decode_points(bundle, other, batches[0], multimask=True, cache=cache)
    want = gm.decode_points(bundle, other, batches[0], multimask=True)
    assert len(made) == 5
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_token_mlp_is_the_same_at_any_thread_count() -> None:
    """The two-way layers' MLP (256 -> 2048 -> 256) with thread-invariant products: MKL's AVX-512 GEMM (Intel's
    float32 path) splits its second product's 2048-long sums between 2 threads for 16 rows and more. The same bits
    at 1, 2 and 3 threads, the module's result to rounding; a module with its own forward runs as it is."""
    from transformers import SamMaskDecoderConfig
    from transformers.models.sam.modeling_sam import SamMLPBlock

    from geosam.models.fast_twoway import token_mlp

    torch.manual_seed(0)
    mlp = SamMLPBlock(SamMaskDecoderConfig()).eval()
    x = torch.randn((64, 7, 256), generator=torch.Generator().manual_seed(3))
    before, outs = torch.get_num_threads(), []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            with torch.no_grad():
                outs.append(token_mlp(mlp, x))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    with torch.no_grad():
        torch.testing.assert_close(outs[0], mlp(x), rtol=1e-5, atol=1e-5)

        class Doubled(SamMLPBlock):
            def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
                return 2 * super().forward(hidden_states)

        doubled = Doubled(SamMaskDecoderConfig()).eval()
        doubled.load_state_dict(mlp.state_dict())
        torch.testing.assert_close(token_mlp(doubled, x), 2 * mlp(x))
