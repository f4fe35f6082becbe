"""Text mode: a scripted labelled generator through the run loop (exact), and the tiny SAM 3 end to end."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

import geosam
from geosam.cli.main import cli
from geosam.errors import ConfigError
from geosam.modes.text import TEXT_COLUMNS
from geosam.segment.base import ChipMasks
from tests._scale_helpers import PhraseOracle, read_log

_Phrases = PhraseOracle


@pytest.fixture(scope="module")
def scene(oracle_scene_600: object) -> object:
    return oracle_scene_600


def test_scripted_phrases_stitch_exactly_with_labels(scene: object) -> None:
    from rasterio.features import shapes
    from shapely.geometry import shape

    gdf = geosam.segment_text(scene.image_path, ["building", "solar panel"],  # type: ignore[attr-defined]
                              mask_generator=_Phrases(scene.label_path),  # type: ignore[attr-defined]
                              chip_size_px=160, overlap_px=24, progress=False)
    assert list(gdf.columns) == [*TEXT_COLUMNS, "geometry"]
    with rasterio.open(scene.label_path) as ds:  # type: ignore[attr-defined]
        lab, tr = ds.read(1).astype(np.int32), ds.transform
    truth: dict[int, object] = {}
    for g, v in shapes(lab, mask=lab > 0, transform=tr, connectivity=4):
        truth[int(v)] = shape(g) if int(v) not in truth else truth[int(v)].union(shape(g))  # type: ignore[attr-defined]
    assert len(gdf) == len(truth)
    assert (gdf.n_chips > 1).sum() >= 5, "the scene must cut objects at seams"
    for _, row in gdf.iterrows():
        k = max(truth, key=lambda i: truth[i].intersection(row.geometry).area)  # type: ignore[attr-defined]
        t = truth[k]
        assert t.symmetric_difference(row.geometry).area < 1e-6 * t.area  # type: ignore[attr-defined]
        assert row.label == ("building" if k % 2 else "solar panel")
        assert row.score == pytest.approx(k / 1000.0)


def test_text_config_validates() -> None:
    with pytest.raises(ConfigError, match="phrase"):
        geosam.segment_text("missing.tif", [" "], mask_generator=_Phrases.__new__(_Phrases))
    with pytest.raises(ConfigError, match="score_threshold"):
        geosam.segment_text("missing.tif", ["tree"], score_threshold=1.5)


def test_postprocess_matches_transformers(tiny_sam3_dir: str) -> None:
    """geosam's instances() equals Sam3Processor.post_process_instance_segmentation's code path.

    transformers' Sam3ImageProcessor imports torchvision at module level (no working torchvision
    beside torch 2.13 CPU), so its method is run on the same outputs through an unbound call when
    importable, else compared against its steps re-implemented here (sigmoid x presence, > threshold,
    bilinear resize of sigmoid masks, > mask threshold).
    """
    from geosam.models import load_model, preprocess
    from geosam.models.sam3 import detect, encode_text, instances, vision_features

    b = load_model(tiny_sam3_dir, device="cpu", dtype="float32")
    img = np.random.default_rng(1).integers(0, 255, (200, 260, 3), dtype=np.uint8)
    pv, _, _ = preprocess(b, [img])
    out = detect(b, vision_features(b, pv), encode_text(b, ["building", "tree"]))
    mine = instances(out, (200, 260), threshold=0.0, mask_threshold=0.5)
    try:
        from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

        ref = Sam3ImageProcessor.post_process_instance_segmentation(
            None, out, threshold=0.0, mask_threshold=0.5, target_sizes=[(200, 260)] * 2)
        ref_pairs = [(r["scores"], r["masks"].bool()) for r in ref]
    except Exception:  # noqa: BLE001 - torchvision missing or broken: the documented steps instead
        scores = out.pred_logits.sigmoid() * out.presence_logits.sigmoid()
        ref_pairs = []
        for s, m in zip(scores, out.pred_masks):
            keep = s > 0.0
            up = torch.nn.functional.interpolate(m[keep].sigmoid()[None], size=(200, 260), mode="bilinear",
                                                 align_corners=False)[0]
            ref_pairs.append((s[keep], up > 0.5))
    for (s1, m1), (s2, m2) in zip(mine, ref_pairs):
        torch.testing.assert_close(s1, s2)
        assert torch.equal(m1, m2)


def test_sam3_runs_in_the_bundles_dtype(tiny_sam3_dir: str) -> None:
    """SAM 3's backbone and detector run in the bundle's dtype (bf16 autocast, as every family's encoder), not
    float32 whatever was asked; the backbone's features come back float32 for the detector and the exemplars."""
    import dataclasses

    from geosam.models import load_model, preprocess
    from geosam.models.sam3 import detect, encode_text, instances, vision_features
    from geosam.models.sam3_exemplars import geometry_tokens, with_exemplars

    b32 = load_model(tiny_sam3_dir, device="cpu", dtype="float32")
    b16 = dataclasses.replace(b32, dtype=torch.bfloat16)
    img = np.random.default_rng(4).integers(0, 255, (200, 260, 3), dtype=np.uint8)
    pv = preprocess(b32, [img])[0]
    v32, v16 = vision_features(b32, pv), vision_features(b16, pv)
    f32, f16 = v32.fpn_hidden_states[-1], v16.fpn_hidden_states[-1]
    assert f16.dtype == f32.dtype == torch.float32
    rel = float((f16 - f32).abs().max() / f32.abs().max())
    assert 1e-4 < rel < 0.1  # bf16's rounding, not float32's numbers
    # bf16's numbers: each feature a bf16 value widened (the backbone's last op ran under autocast)
    assert torch.equal(f16, f16.bfloat16().float())
    text = encode_text(b16, ["building", "tree"])
    ex = geometry_tokens(b16.model, [(v16, torch.tensor([[0.3, 0.4, 0.2, 0.1]]), torch.tensor([1]))])
    for t in (text, with_exemplars(text, ex)):
        out = detect(b16, v16, t)
        assert out.pred_masks.dtype == torch.bfloat16  # the detector's mask head under autocast
        per_phrase = instances(out, (200, 260), threshold=0.0)
        assert len(per_phrase) == 2 and all(m.shape[1:] == (200, 260) for _, m in per_phrase)


def test_tiny_sam3_through_the_cli(tiny_sam3_dir: str, scene: object, tmp_path: Path) -> None:
    out = tmp_path / "text.gpkg"
    res = CliRunner().invoke(cli, ["text", str(scene.image_path), "-o", str(out), "--text", "building",  # type: ignore[attr-defined]
                                   "--text", "solar panel", "--model", tiny_sam3_dir, "--device", "cpu",
                                   "--dtype", "float32", "--chip-size", "336", "--overlap", "32",
                                   "--score-threshold", "0.0", "--no-progress", "--profile"])
    assert res.exit_code == 0, res.output
    for stage in ("backbone", "text_encoder", "detector", "stitch"):
        assert stage in res.output
    import geopandas as gpd

    gdf = gpd.read_file(out)
    assert list(gdf.columns) == [*TEXT_COLUMNS, "geometry"]
    assert set(gdf["label"]) <= {"building", "solar panel"}
    assert len(gdf) > 0 and (gdf["score"] > 0).all()


def test_a_phrase_that_finds_nothing_gives_an_empty_table(tiny_sam3_dir: str, scene: object) -> None:
    gdf = geosam.segment_text(scene.image_path, ["building", "solar panel"], model=tiny_sam3_dir,  # type: ignore[attr-defined]
                              score_threshold=0.999, device="cpu", dtype="float32", chip_size_px=336, overlap_px=32,
                              progress=False)
    assert len(gdf) == 0 and list(gdf.columns) == [*TEXT_COLUMNS, "geometry"]
    assert gdf.attrs["geosam"]["chips_empty"] == gdf.attrs["geosam"]["chips_total"] > 0


def test_text_needs_a_text_model(tiny_sam_dir: str, scene: object) -> None:
    with pytest.raises(ConfigError, match="text prompts are not supported"):
        geosam.segment_text(scene.image_path, ["tree"], model=tiny_sam_dir, device="cpu",  # type: ignore[attr-defined]
                            progress=False)


def test_real_clip_tokenizer_from_bpe(tmp_path: Path) -> None:
    """CLIP's BPE merges give CLIP's ids. The merges ship in the open_clip_torch wheel, installed without its
    dependencies by `make test`; the file is found without importing the package (which needs torchvision)."""
    import importlib.util

    from geosam.models.sam3 import write_clip_tokenizer

    spec = importlib.util.find_spec("open_clip")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps open_clip_torch (make test does)"
    bpe = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    assert bpe.exists(), bpe
    tok = write_clip_tokenizer(tmp_path, bpe_path=bpe)
    assert len(tok) == 49408
    assert tok("solar panel")["input_ids"] == [49406, 5199, 3724, 49407]


# -- text with indices: --min-index and the prefilter ------------------------------------------------


class _Counting(_Phrases):
    """_Phrases on a vegetation scene: odd ids "building", even ids (vegetated) "tree"; counts the chips it sees."""

    def __init__(self, label_path: str) -> None:
        super().__init__(label_path)
        self.chips = 0

    def generate(self, chip: object) -> ChipMasks:
        self.chips += 1
        out = super().generate(chip)
        return ChipMasks(out.masks, out.predicted_iou, out.stability_score,
                         labels=tuple("tree" if lab == "solar panel" else lab for lab in out.labels or ()))


def _veg_strip(tmp_path: Path) -> tuple[Path, Path]:
    """64 x 256 px, 4 bands (naip order): a vegetated square (id 2) in the first 64 px chip, a bare one (id 1) in the last."""
    from rasterio.transform import from_origin

    h, w = 64, 256
    red = np.full((h, w), 3000, np.uint16)
    nir = red.copy()
    nir[10:30, 10:30] = 27000  # ndvi 0.8
    lab = np.zeros((h, w), np.uint32)
    lab[10:30, 10:30] = 2
    lab[10:30, 200:230] = 1
    paths = []
    for name, bands in (("img.tif", np.stack([red, red, red, nir])), ("lab.tif", lab[None])):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=w, height=h, count=len(bands),
                           dtype=bands.dtype.name, crs="EPSG:32633",
                           transform=from_origin(500000, 5300000, 10, 10)) as ds:
            ds.write(bands)
        paths.append(tmp_path / name)
    return paths[0], paths[1]


def test_text_with_min_index_and_prefilter(tmp_path: Path) -> None:
    from tests.data.make_scenes import make_index_scene

    sc = make_index_scene(tmp_path / "idx", seed=4, n_objects=30)
    kw = {"chip_size_px": 256, "overlap_px": 32, "reflectance_scale": 1e-4, "progress": False}
    full = geosam.segment_text(sc.image_path, ["building", "tree"], mask_generator=_Counting(str(sc.label_path)),
                               indices=["ndvi"], **kw)
    assert {"ndvi_mean", "ndvi_median"} <= set(full.columns) and len(full) == sc.n_objects
    kept = geosam.segment_text(sc.image_path, ["building", "tree"], mask_generator=_Counting(str(sc.label_path)),
                               indices=["ndvi"], min_index={"ndvi": 0.3}, prefilter=True, **kw)
    assert list(kept.columns[: len(TEXT_COLUMNS)]) == list(TEXT_COLUMNS)
    assert len(kept) == (full["ndvi_mean"] >= 0.3).sum() == len(sc.vegetated)
    assert set(kept["label"]) == {"tree"} and (kept["ndvi_mean"] >= 0.3).all()
    expect = full[full["ndvi_mean"] >= 0.3].sort_values("score")
    np.testing.assert_allclose(np.sort(kept["score"].to_numpy()), expect["score"].to_numpy())

    img, lab = _veg_strip(tmp_path)
    gen = _Counting(str(lab))
    strip = geosam.segment_text(img, ["building", "tree"], mask_generator=gen, chip_size_px=64, overlap_px=0,
                                band_roles="naip", min_index={"ndvi": 0.3}, prefilter=True, progress=False)
    st = strip.attrs["geosam"]
    assert st["chips_total"] == 4 and st["chips_skipped_prefilter"] == 3 and gen.chips == 1
    assert list(strip["label"]) == ["tree"] and strip["ndvi_mean"].iloc[0] == pytest.approx(0.8, abs=1e-3)


def test_text_cli_min_index_prefilter(tiny_sam3_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from geosam.segment.text import TextMaskGenerator

    img, _ = _veg_strip(tmp_path)
    seen: list[str] = []
    real = TextMaskGenerator.generate

    def spy(self: TextMaskGenerator, chip: object) -> ChipMasks:
        seen.append(chip.spec.chip_id)  # type: ignore[attr-defined]
        return real(self, chip)  # type: ignore[arg-type]

    monkeypatch.setattr(TextMaskGenerator, "generate", spy)
    out = tmp_path / "veg.gpkg"
    res = CliRunner().invoke(cli, ["text", str(img), "-o", str(out), "--text", "tree", "--model", tiny_sam3_dir,
                                   "--device", "cpu", "--dtype", "float32", "--chip-size", "64", "--overlap", "0",
                                   "--band-roles", "naip", "--min-index", "ndvi=0.3", "--prefilter",
                                   "--score-threshold", "0.0", "--mask-threshold", "0.0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert seen == ["r0c0"]  # the three chips without a pixel of NDVI >= 0.3 never reach the model
    import geopandas as gpd

    gdf = gpd.read_file(out)
    assert "ndvi_mean" in gdf.columns and (gdf["ndvi_mean"] >= 0.3).all()


def _text_cli(tiny_sam3_dir: str, scene: object, out: Path, *extra: str) -> None:
    res = CliRunner().invoke(cli, ["text", str(scene.image_path), "--text", "building",  # type: ignore[attr-defined]
                                   "--model", tiny_sam3_dir, "--device", "cpu", "--dtype", "float32", "--chip-size",
                                   "336", "--overlap", "32", "--score-threshold", "0.0", "--no-progress", "-o",
                                   str(out), *extra])
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def building_run(tiny_sam3_dir: str, scene: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``a.gpkg`` and ``a.tif`` (--label-raster) of one uncompiled `_text_cli` run (read only)."""
    d = tmp_path_factory.mktemp("text_building")
    _text_cli(tiny_sam3_dir, scene, d / "a.gpkg", "--label-raster", str(d / "a.tif"))
    return d


def test_cli_label_raster(building_run: Path, scene: object) -> None:
    """--label-raster writes the objects' ids on the scene's grid."""
    import geopandas as gpd
    from shapely.geometry import Point

    a = gpd.read_file(building_run / "a.gpkg")
    with rasterio.open(scene.image_path) as src, rasterio.open(building_run / "a.tif") as la:  # type: ignore[attr-defined]
        assert (la.width, la.height, la.transform, la.crs) == (src.width, src.height, src.transform, src.crs)
        lab = la.read(1)
    ids = set(np.unique(lab[lab > 0]).tolist())
    assert ids and ids <= set(a["id"].tolist())
    for k in sorted(ids)[:5]:  # a pixel labelled k has its centre inside object k (objects may overlap)
        poly = a.loc[a["id"] == k].geometry.iloc[0]
        rows, cols = np.nonzero(lab == k)
        for r, c in list(zip(rows, cols))[:: max(1, len(rows) // 50)]:
            assert poly.buffer(1e-6).contains(Point(src.transform * (c + 0.5, r + 0.5)))


@pytest.mark.slow
def test_cli_compile_changes_nothing(tiny_sam3_dir: str, scene: object, building_run: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """--compile compiles SAM 3's per-chip parts and gives the same objects (torch.compile with its "eager"
    backend here: dynamo's tracing and guards without inductor's minutes of C++ builds)."""
    import geopandas as gpd

    from geosam.models.sam3 import SAM3_COMPILED

    compiled: list[str] = []
    real = torch.compile

    def eager_compile(module: torch.nn.Module, **kw: object) -> object:
        compiled.append(type(module).__name__)
        return real(module, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    _text_cli(tiny_sam3_dir, scene, tmp_path / "b.gpkg", "--compile")
    assert compiled == ["Sam3VisionModel", "Sam3DetrEncoder", "Sam3DetrDecoder", "Sam3MaskDecoder"]
    assert len(compiled) == len(SAM3_COMPILED)
    a, b = gpd.read_file(building_run / "a.gpkg"), gpd.read_file(tmp_path / "b.gpkg")  # a: the same run uncompiled
    assert len(a) > 0 and len(a) == len(b)
    assert all(g1.equals(g2) for g1, g2 in zip(a.geometry, b.geometry))


def test_text_run_resumes_from_its_journal(scene: object, tmp_path: Path) -> None:
    """Text mode gets resume as segment-everything does: the same output, only the missing chips generated."""
    import sqlite3

    from geosam.modes.text import segment_text_to_file
    from tests.test_journal import assert_same

    kw = {"chip_size_px": 160, "overlap_px": 24, "progress": False}
    path = scene.image_path  # type: ignore[attr-defined]
    labels = scene.label_path  # type: ignore[attr-defined]
    fresh = geosam.segment_text(path, ["building", "solar panel"], mask_generator=PhraseOracle(labels), **kw)
    journal = tmp_path / "text.geosam-journal"
    first = geosam.segment_text(path, ["building", "solar panel"], mask_generator=PhraseOracle(labels),
                                journal=journal, **kw)
    assert_same(first, fresh)
    with sqlite3.connect(journal) as conn:
        keys = [k for (k,) in conn.execute("SELECT key FROM chips ORDER BY key")]
        dropped = keys[::3]
        conn.executemany("DELETE FROM chips WHERE key = ?", [(k,) for k in dropped])
    log = str(tmp_path / "again.log")
    summary = segment_text_to_file(path, tmp_path / "again.gpkg", ["building", "solar panel"],
                                   mask_generator=PhraseOracle(labels, log), journal=journal, **kw)
    assert sorted(read_log(log)) == sorted(k.split(":")[0] for k in dropped)
    assert summary.chips_replayed == len(keys) - len(dropped) and summary.objects == len(fresh)
    assert summary.details["phrases"] == ["building", "solar panel"]
    back = gpd.read_file(tmp_path / "again.gpkg")
    assert list(back.columns) == list(fresh.columns) and sorted(back["score"]) == sorted(fresh["score"])
    with pytest.raises(ConfigError, match="phrases"):  # the phrases are part of what the journal was written for
        geosam.segment_text(path, ["building"], mask_generator=PhraseOracle(labels), journal=journal, **kw)


def test_sam3_rotary_embedding_is_the_models_own(tiny_sam3_dir: str) -> None:
    """Loading SAM 3 gives transformers' SAM 3 module geosam's one-pass rotary embedding, which returns the module's
    own function's bits (float32 and bf16, strided as the ViT hands them over), so the backbone's output is the same
    with and without it."""
    import importlib

    from geosam.models import load_model, preprocess
    from geosam.models.sam3 import vision_features

    ms = importlib.import_module("transformers.models.sam3.modeling_sam3")
    b = load_model(tiny_sam3_dir, device="cpu", dtype="float32")
    fast = ms.apply_rotary_pos_emb_2d
    assert getattr(fast, "geosam_rope", False)
    original = fast.original
    gen = torch.Generator().manual_seed(5)
    for dtype in (torch.float32, torch.bfloat16):
        q, k = (torch.randn((4, 24, 2, 16), generator=gen).to(dtype).transpose(1, 2) for _ in "qk")
        ang = torch.rand((1, 24, 8), generator=gen) * 20
        cos, sin = ang.cos().repeat_interleave(2, -1), ang.sin().repeat_interleave(2, -1)
        for got, want in zip(fast(q, k, cos=cos, sin=sin), original(q, k, cos=cos, sin=sin)):
            assert got.dtype == want.dtype == dtype and torch.equal(got, want)
    img = np.random.default_rng(6).integers(0, 255, (200, 260, 3), dtype=np.uint8)
    pv = preprocess(b, [img])[0]
    with_kernel = vision_features(b, pv).last_hidden_state
    ms.apply_rotary_pos_emb_2d = original
    try:
        assert torch.equal(vision_features(b, pv).last_hidden_state, with_kernel)
    finally:
        ms.apply_rotary_pos_emb_2d = fast
