"""The segment-everything engine: crop layers, batched encoding, autocast choice, prefetching reader, --profile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import geosam.models.device as gm
from geosam.cli.main import cli
from geosam.models import SamBundle, load_model
from geosam.modes.everything import segment_scene
from geosam.segment import SamMaskGenerator, crop
from geosam.segment.crop import decode_points as crop_decode
from geosam.segment.sam_utils import generate_crop_boxes, is_box_near_crop_edge
from geosam.testing import OracleMaskGenerator
from tests.data.make_scenes import make_oracle_scene
from tests.test_segment_everything import fake_decode_points, make_chip


@pytest.fixture(scope="module")
def bundle(tiny_sam_dir: str) -> SamBundle:
    return load_model(tiny_sam_dir, device="cpu")


# -- crop layers ---------------------------------------------------------------------


def test_generate_crop_boxes_like_sam() -> None:
    boxes, layers = generate_crop_boxes(100, 200, 0, 0.5)
    assert boxes == [[0, 0, 200, 100]] and layers == [0]
    boxes, layers = generate_crop_boxes(1000, 1000, 1, 512 / 1500)
    assert layers == [0, 1, 1, 1, 1]
    # overlap = int(512/1500 * 1000) = 341, crop side = ceil((341 + 1000) / 2) = 671
    assert boxes[1:] == [[0, 0, 671, 671], [0, 330, 671, 1000], [330, 0, 1000, 671], [330, 330, 1000, 1000]]
    assert len(generate_crop_boxes(1000, 1000, 2, 512 / 1500)[0]) == 1 + 4 + 16


def test_is_box_near_crop_edge() -> None:
    crop, chip = [0, 0, 60, 60], [0, 0, 100, 100]
    boxes = torch.tensor([[5, 5, 20, 20], [30, 30, 58, 50], [0, 0, 10, 10]])
    # the second box touches the crop's inner right edge; the others only the chip's edge or nothing
    assert is_box_near_crop_edge(boxes, crop, chip, atol=5).tolist() == [False, True, False]


def test_crop_layers_find_smaller_objects(bundle: SamBundle, monkeypatch) -> None:
    # fake decoder: discs of fixed low-res radius around each prompt, so a crop (fewer chip px per
    # low-res px) yields smaller masks in the chip frame
    monkeypatch.setattr(crop, "decode_points", fake_decode_points)
    chip = make_chip(256, 256)
    kw = {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    plain = SamMaskGenerator(bundle, **kw).generate(chip)
    g = SamMaskGenerator(bundle, crop_n_layers=1, **kw)
    crops = g.generate(chip)
    assert len(crops) > len(plain)
    assert crops.masks.sum(axis=(1, 2)).min() < plain.masks.sum(axis=(1, 2)).min()
    assert g.last_stats["points_total"] == 4 + 4 * 4
    assert {"encode", "decode", "filter", "upsample", "nms", "postprocess"} <= set(g.timings_s)  # every stage timed


def test_batches_of_one_crop_share_the_decoders_image_side(bundle: SamBundle, monkeypatch, count_calls) -> None:
    """The prompt batches of one crop decode with one cache: the image side is made once per crop (twice with
    two chips), and the masks are those of a generator whose batches each make their own."""
    from geosam.models import fast_transformer as fd

    made = count_calls(fd, "_image_sides")
    chips = [make_chip(256, 256, seed=3), make_chip(256, 256, seed=4)]
    kw = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "points_per_batch": 4}
    got = [SamMaskGenerator(bundle, **kw).generate(c) for c in chips]
    assert len(made) == 2  # 4 batches of 4 points per chip, one image side each
    monkeypatch.setattr(crop, "decode_points", lambda *a, cache=None, **k: crop_decode(*a, **k))
    want = [SamMaskGenerator(bundle, **kw).generate(c) for c in chips]
    assert len(made) == 2 + 8
    for g, w in zip(got, want):
        assert len(g) > 0 and np.array_equal(g.masks, w.masks)
        assert np.array_equal(g.predicted_iou, w.predicted_iou)


# -- batched encoding --------------------------------------------------------------


def test_generate_batch_equals_generate(bundle: SamBundle) -> None:
    chips = [make_chip(256, 256, seed=1), make_chip(200, 300, seed=2), make_chip(256, 256, np.zeros((256, 256), bool))]
    g = SamMaskGenerator(bundle, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    batch = g.generate_batch(chips)
    single = [g.generate(c) for c in chips]
    assert [len(b) for b in batch] == [len(s) for s in single]
    assert len(batch[0]) > 0 and len(batch[2]) == 0
    for b, s in zip(batch, single):
        # the same masks up to float differences of a batched encoder: compare by IoU
        if len(b):
            inter = (b.masks[:, None] & s.masks[None]).sum(axis=(2, 3))
            union = (b.masks[:, None] | s.masks[None]).sum(axis=(2, 3))
            assert (inter / np.maximum(union, 1)).max(axis=1).min() > 0.95
            np.testing.assert_allclose(np.sort(b.predicted_iou), np.sort(s.predicted_iou), atol=1e-3)


# -- autocast choice ----------------------------------------------------------------


def test_auto_dtype_choice(monkeypatch) -> None:
    monkeypatch.setenv("GEOSAM_CPU_AMX", "1")
    assert gm.resolve_dtype("auto", "cpu") == torch.bfloat16
    assert gm.resolve_dtype("float32", "cpu") == torch.float32  # switchable
    monkeypatch.setenv("GEOSAM_CPU_AMX", "0")
    assert gm.resolve_dtype("auto", "cpu") == torch.float32
    assert gm.resolve_dtype("auto", "cuda") == torch.float16
    assert gm.resolve_dtype("auto", "mps") == torch.float32
    monkeypatch.delenv("GEOSAM_CPU_AMX")
    gm._cpuinfo_field.cache_clear()
    try:
        monkeypatch.setattr("builtins.open", _fake_open("flags\t\t: fpu sse avx512f amx_bf16 amx_tile\n"))
        assert gm.cpu_has_amx() and gm.resolve_dtype("auto", "cpu") == torch.bfloat16
        gm._cpuinfo_field.cache_clear()
        monkeypatch.setattr("builtins.open", _fake_open("flags\t\t: fpu sse avx2\n"))
        assert not gm.cpu_has_amx()
    finally:
        gm._cpuinfo_field.cache_clear()


def _fake_open(text: str):
    import io

    def fake(path, *args, **kwargs):
        assert path == "/proc/cpuinfo"
        return io.StringIO(text)

    return fake


# -- prefetching reader, batches and --profile in the pipeline ----------------------------------


@pytest.fixture(scope="module")
def oracle_scene(tmp_path_factory: pytest.TempPathFactory):
    return make_oracle_scene(tmp_path_factory.mktemp("engine"), width=600, height=500, n_objects=40, seed=7)


def _rows(gdf) -> list[tuple]:
    return [(round(a, 6), g.wkb) for a, g in zip(gdf["area_m2"], gdf.geometry)]


def test_prefetch_and_batches_give_identical_results(oracle_scene) -> None:
    kw = {"chip_size_px": 256, "overlap_px": 32, "progress": False}
    base = segment_scene(oracle_scene.image_path, OracleMaskGenerator(oracle_scene.label_path), prefetch_chips=0, **kw)
    pre = segment_scene(oracle_scene.image_path, OracleMaskGenerator(oracle_scene.label_path), prefetch_chips=2, **kw)
    batched = segment_scene(
        oracle_scene.image_path, OracleMaskGenerator(oracle_scene.label_path), prefetch_chips=1, chips_per_batch=3, **kw
    )
    assert len(base) == oracle_scene.n_objects
    assert _rows(pre) == _rows(base) == _rows(batched)
    t = pre.attrs["geosam"]["timings_s"]
    assert {"read", "stretch", "generate", "stitch"} <= set(t)


def test_reader_errors_reach_the_caller(oracle_scene, monkeypatch) -> None:
    from geosam.read.scene import Scene

    def boom(sc, spec, timings=None):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Scene, "read_chip", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        segment_scene(oracle_scene.image_path, OracleMaskGenerator(oracle_scene.label_path), chip_size_px=256,
                      overlap_px=32, progress=False, prefetch_chips=2)


def test_cli_profile_prints_stages(tiny_sam_dir, oracle_scene, tmp_path) -> None:
    out = tmp_path / "o.gpkg"
    res = CliRunner().invoke(cli, [
        "segment", str(oracle_scene.image_path), "-o", str(out), "--model", tiny_sam_dir, "--chip-size", "512",
        "--overlap", "0", "--points-per-side", "2", "--no-progress", "--profile", "--chips-per-batch", "2",
        "--device", "cpu",
    ])
    assert res.exit_code == 0, res.output
    for stage in ("read", "stretch", "encode", "decode", "filter", "stitch", "total (wall)"):
        assert stage in res.output
