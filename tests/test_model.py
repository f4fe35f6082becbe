"""Loading SAM checkpoints and the preprocess / encode / decode steps (tiny random-weight model)."""

from __future__ import annotations

import json
import logging
import shutil
import socket

import numpy as np
import pytest
import torch

from geosam import models as gm
from geosam.config import DEFAULT_MODEL
from geosam.errors import ConfigError, ModelLoadError
from geosam.models import device as gdev
from geosam.models.bundle import SAM_IMAGE_MEAN


@pytest.fixture(scope="module")
def bundle(tiny_sam_dir: str) -> gm.SamBundle:
    return gm.load_model(tiny_sam_dir, device="cpu")


# -- loading -----------------------------------------------------------------


def test_load_from_saved_dir(tiny_sam_dir: str, bundle: gm.SamBundle) -> None:
    from transformers import SamModel, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    assert isinstance(bundle.model, SamModel)
    assert not bundle.model.training
    assert isinstance(bundle.processor, SamProcessor)
    assert isinstance(bundle.processor.image_processor, SamImageProcessorPil)
    assert bundle.name == tiny_sam_dir
    assert bundle.device == torch.device("cpu")
    assert bundle.dtype == torch.float32
    assert (bundle.longest_edge, bundle.input_size, bundle.pad_size, bundle.low_res_size) == (1024, 1024, (1024, 1024), 256)
    assert bundle.image_mean == pytest.approx((0.485, 0.456, 0.406))
    assert bundle.image_std == pytest.approx((0.229, 0.224, 0.225))
    assert bundle.rescale_factor == pytest.approx(1 / 255)
    # cached: same object for the same (model, device, dtype), "auto" dtype resolves to float32 on cpu
    assert gm.load_model(tiny_sam_dir, device="cpu", dtype="auto") is bundle
    assert gm.load_model(tiny_sam_dir, device="cpu", dtype="float32") is bundle


def test_missing_processor_config_falls_back_to_defaults(tiny_sam_dir, tmp_path, caplog) -> None:
    d = tmp_path / "no_processor"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(f"{tiny_sam_dir}/{name}", d / name)
    with caplog.at_level(logging.WARNING, logger="geosam.models.hf_sam"):
        b = gm.load_model(str(d), device="cpu")
    assert "default preprocessing" in caplog.text
    assert (b.longest_edge, b.input_size) == (1024, 1024)
    assert b.image_mean == pytest.approx(SAM_IMAGE_MEAN)


def _assert_helpful(msg: str, name: str) -> None:
    assert name in msg
    assert "save_pretrained" in msg
    assert "hf download" in msg
    assert "HF_HUB_OFFLINE=1" in msg


def test_nonexistent_local_path(tmp_path) -> None:
    missing = str(tmp_path / "nowhere" / "sam")
    with pytest.raises(ModelLoadError) as err:
        gm.load_model(missing, device="cpu")
    assert "no such local directory" in str(err.value)
    _assert_helpful(str(err.value), missing)


def test_hub_id_offline_never_touches_the_network(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    connects: list[object] = []

    def no_network(self, address):  # any connection attempt is recorded and refused
        connects.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    name = "geosam-tests/no-such-model"
    with pytest.raises(ModelLoadError) as err:
        gm.load_model(name, device="cpu")
    assert connects == []  # offline: only the local cache is looked at, no retries against the hub
    assert "offline" in str(err.value)
    _assert_helpful(str(err.value), name)


def test_dir_without_config_json(tmp_path) -> None:
    (tmp_path / "weights.pth").write_bytes(b"\0")
    with pytest.raises(ModelLoadError, match="no config.json"):
        gm.load_model(str(tmp_path), device="cpu")


def test_file_instead_of_dir(tmp_path) -> None:
    f = tmp_path / "sam.pth"
    f.write_bytes(b"\0")
    with pytest.raises(ModelLoadError, match="not a directory"):
        gm.load_model(str(f), device="cpu")


def test_non_sam_config(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="'bert' model, not a SAM"):
        gm.load_model(str(tmp_path), device="cpu")


def test_load_error_names_the_hub_id_to_download(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # a hub id: the download command names that id; a local path (no hub id): the default model as example
    with pytest.raises(ModelLoadError) as err:
        gm.load_model("geosam-tests/other-model", device="cpu")
    assert "hf download geosam-tests/other-model" in str(err.value)
    with pytest.raises(ModelLoadError) as err:
        gm.load_model(str(tmp_path / "missing"), device="cpu")
    assert f"hf download {DEFAULT_MODEL}" in str(err.value)
    assert gm.BUILTIN_OFFLINE_MODEL_HINT in str(err.value)


# -- device and dtype ----------------------------------------------------------


def test_resolve_device_without_accelerators(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gdev, "_mps_available", lambda: False)
    assert gm.resolve_device("auto") == torch.device("cpu")
    assert gm.resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        gm.resolve_device("cuda")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        gm.resolve_device("cuda:1")
    with pytest.raises(ConfigError, match="MPS"):
        gm.resolve_device("mps")
    with pytest.raises(ConfigError, match="unknown device"):
        gm.resolve_device("tpu")


def test_resolve_device_auto_prefers_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gm.resolve_device("auto") == torch.device("cuda")


def test_resolve_dtype() -> None:
    assert gm.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert gm.resolve_dtype("auto", "cuda") == torch.float16
    assert gm.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert gm.resolve_dtype("float16", "cpu") == torch.float16
    assert gm.resolve_dtype(torch.float32, "cpu") == torch.float32
    with pytest.raises(ConfigError, match="unknown dtype"):
        gm.resolve_dtype("float64", "cpu")


# -- preprocess ----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(256, 256), (400, 600), (1024, 1024), (1300, 700)])
def test_preprocess_matches_sam_processor(bundle: gm.SamBundle, shape) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    pv, orig, resized = gm.preprocess(bundle, [img])
    ref = bundle.processor(images=img, return_tensors="pt")
    assert pv.shape == ref["pixel_values"].shape == (1, 3, 1024, 1024)
    assert orig == [shape]
    assert [tuple(s) for s in ref["reshaped_input_sizes"].tolist()] == resized
    diff = (pv - ref["pixel_values"]).abs()
    # PIL resizes in 8-bit fixed point: at most one uint8 step apart (1/255/0.224 = 0.0175)
    assert float(diff.max()) < 0.02
    assert float(diff.mean()) < 0.005
    if shape == (1024, 1024):  # no resize: identical
        assert float(diff.max()) < 1e-5


def test_preprocess_batch_pads_with_zeros(bundle: gm.SamBundle) -> None:
    imgs = [np.full((100, 50, 3), 255, np.uint8), np.zeros((30, 60, 3), np.uint8)]
    pv, orig, resized = gm.preprocess(bundle, imgs)
    assert pv.shape == (2, 3, 1024, 1024)
    assert orig == [(100, 50), (30, 60)]
    assert resized == [(1024, 512), (512, 1024)]
    assert float(pv[0, :, :, 512:].abs().max()) == 0.0
    assert float(pv[1, :, 512:, :].abs().max()) == 0.0
    expected = (1.0 - 0.485) / 0.229
    assert float(pv[0, 0, :, :512].min()) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        gm.preprocess(bundle, [np.zeros((10, 10), np.uint8)])


def test_frames() -> None:
    assert gm.resized_size(400, 600, 1024) == (683, 1024)
    assert gm.resized_size(1024, 1024, 1024) == (1024, 1024)
    pts = gm.to_model_frame(np.array([[300.0, 200.0], [600.0, 400.0]]), (400, 600), (683, 1024))
    assert pts.numpy() == pytest.approx(np.array([[512.0, 341.5], [1024.0, 683.0]]))
    boxes = gm.to_model_frame(np.array([[0.0, 0.0, 600.0, 400.0]]), (400, 600), (683, 1024))
    assert boxes.numpy() == pytest.approx(np.array([[0.0, 0.0, 1024.0, 683.0]]))


def test_upsample_logits_crops_padding() -> None:
    low = torch.full((2, 256, 256), -5.0)
    low[:, :171, :] = 5.0  # the image part of a 600 x 400 chip (683 / 4 rows)
    up = gm.upsample_logits(low, 1024, (683, 1024), (400, 600))
    assert up.shape == (2, 400, 600)
    assert bool((up > 0).all())


# -- encode / decode -------------------------------------------------------------


def test_encode_and_decode_shapes(bundle: gm.SamBundle) -> None:
    img = np.random.default_rng(2).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    pv, _, _ = gm.preprocess(bundle, [img])
    emb = gm.encode(bundle, pv)
    assert emb.shape == (1, 32, 64, 64)
    assert torch.equal(gm.encode(bundle, pv), emb)  # deterministic: an embedding can be cached and reused
    other, _, _ = gm.preprocess(bundle, [255 - img])
    assert not torch.allclose(gm.encode(bundle, other), emb)  # and it depends on the image

    pts = np.array([[100.0, 200.0], [512.0, 512.0], [1000.0, 20.0]])
    logits, iou = gm.decode_points(bundle, emb, pts)
    assert logits.shape == (3, 3, 256, 256) and iou.shape == (3, 3)
    assert logits.dtype == torch.float32
    logits1, iou1 = gm.decode_points(bundle, emb, pts, labels=[1, 0, 1], multimask=False)
    assert logits1.shape == (3, 1, 256, 256) and iou1.shape == (3, 1)
    with pytest.raises(ValueError, match="labels"):
        gm.decode_points(bundle, emb, pts, labels=[1, 1])

    boxes = np.array([[10.0, 10.0, 300.0, 200.0], [500.0, 500.0, 900.0, 1000.0]])
    blog, biou = gm.decode_boxes(bundle, emb, boxes)
    assert blog.shape == (2, 1, 256, 256) and biou.shape == (2, 1)
    blog3, _ = gm.decode_boxes(bundle, emb, boxes, multimask=True)
    assert blog3.shape == (2, 3, 256, 256)


def test_bfloat16_autocast_on_cpu(tiny_sam_dir: str) -> None:
    b = gm.load_model(tiny_sam_dir, device="cpu", dtype="bfloat16")
    assert b.dtype == torch.bfloat16
    assert b is not gm.load_model(tiny_sam_dir, device="cpu", dtype="float32")
    pv, _, _ = gm.preprocess(b, [np.zeros((64, 64, 3), np.uint8)])
    emb = gm.encode(b, pv)
    logits, _ = gm.decode_points(b, emb, np.array([[10.0, 10.0]]))
    assert logits.shape == (1, 3, 256, 256) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_decode_is_the_one_decoder(bundle: gm.SamBundle) -> None:
    img = np.random.default_rng(3).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    pv, _, _ = gm.preprocess(bundle, [img])
    emb = gm.encode(bundle, pv)
    pts = np.array([[100.0, 200.0], [512.0, 512.0]])
    boxes = np.array([[10.0, 10.0, 300.0, 200.0], [500.0, 500.0, 900.0, 1000.0]])
    # the point / box shorthands are decode() with one point or one box per object
    for got, want in (
        (gm.decode(bundle, emb, points=pts[:, None], multimask=True), gm.decode_points(bundle, emb, pts)),
        (gm.decode(bundle, emb, boxes=boxes), gm.decode_boxes(bundle, emb, boxes)),
    ):
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])
    both, _ = gm.decode(bundle, emb, points=pts[:, None], boxes=boxes)
    assert both.shape == (2, 1, 256, 256)
    with pytest.raises(ValueError, match="points, boxes or both"):
        gm.decode(bundle, emb)
    with pytest.raises(ValueError, match="one box per object"):
        gm.decode(bundle, emb, points=pts[:, None], boxes=boxes[:1])
