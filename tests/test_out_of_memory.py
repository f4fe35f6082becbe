"""Out of device memory in segment-everything: halve the batch, retry, then say what to change.

The out-of-memory errors are injected (monkeypatched decode / encode calls raising
``torch.cuda.OutOfMemoryError`` or ``RuntimeError: ... out of memory``), so this runs on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geosam.errors import DeviceMemoryError, GeosamError
from geosam.models import SamBundle, load_model
from geosam.segment import SamMaskGenerator, everything
from tests.test_segment_everything import make_chip

SETTINGS = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture(scope="module")
def bundle(tiny_sam_dir: str) -> SamBundle:
    return load_model(tiny_sam_dir, device="cpu")


def same_masks(a, b) -> None:
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_allclose(a.predicted_iou, b.predicted_iou, rtol=1e-5, atol=1e-6)


def test_decoder_oom_halves_points_per_batch_and_retries(bundle: SamBundle, monkeypatch) -> None:
    chip = make_chip(64, 64, seed=1)
    expected = SamMaskGenerator(bundle, points_per_batch=16, **SETTINGS).generate(chip)
    gen = SamMaskGenerator(bundle, points_per_batch=16, **SETTINGS)
    real = everything.process_crop
    calls: list[int] = []

    def tight(bundle_, params, *args, **kwargs):
        calls.append(params.points_per_batch)
        if params.points_per_batch > 4:  # only 4 points fit in "device memory"
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(bundle_, params, *args, **kwargs)

    monkeypatch.setattr(everything, "process_crop", tight)
    got = gen.generate(chip)
    assert calls == [16, 8, 4]
    assert gen.points_per_batch == 4  # kept for later chips
    same_masks(got, expected)


def test_encoder_oom_halves_the_image_batch(bundle: SamBundle, monkeypatch) -> None:
    chips = [make_chip(64, 64, seed=s) for s in range(3)]
    expected = [SamMaskGenerator(bundle, **SETTINGS).generate(c) for c in chips]
    gen = SamMaskGenerator(bundle, encoder_batch_size=4, **SETTINGS)
    real = everything.encode
    sizes: list[int] = []

    def tight(bundle_, pixel_values):
        sizes.append(int(pixel_values.shape[0]))
        if pixel_values.shape[0] > 1:
            raise RuntimeError("MPS backend out of memory (MPS allocated: 1 GiB)")
        return real(bundle_, pixel_values)

    monkeypatch.setattr(everything, "encode", tight)
    got = gen.generate_batch(chips)
    assert sizes == [3, 1, 1, 1]
    assert gen.encoder_batch_size == 1
    for g, e in zip(got, expected):
        same_masks(g, e)


def test_oom_at_batch_one_says_what_to_change(bundle: SamBundle, monkeypatch) -> None:
    def never_fits(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(everything, "process_crop", never_fits)
    gen = SamMaskGenerator(bundle, points_per_batch=4, **SETTINGS)
    with pytest.raises(DeviceMemoryError) as info:
        gen.generate(make_chip(64, 64))
    assert isinstance(info.value, GeosamError)
    msg = str(info.value)
    for hint in ("--points-per-batch", "--chips-per-batch", "--dtype", "--device cpu"):
        assert hint in msg
    assert gen.points_per_batch == 1


def test_other_runtime_errors_are_not_retried(bundle: SamBundle, monkeypatch) -> None:
    calls: list[int] = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(everything, "process_crop", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        SamMaskGenerator(bundle, points_per_batch=16, **SETTINGS).generate(make_chip(64, 64))
    assert calls == [1]
