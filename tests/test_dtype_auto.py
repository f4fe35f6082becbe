"""dtype="auto" on the CPU: bf16 only where the CPU has native bf16 measured faster with the same masks; logged."""

from __future__ import annotations

import logging

import pytest
import torch

from geosam.models import device as dev


@pytest.fixture(autouse=True)
def _fresh_log_cache():
    dev._log_choice.cache_clear()
    yield
    dev._log_choice.cache_clear()


@pytest.mark.parametrize(
    ("env", "kind"),
    [({"GEOSAM_CPU_BF16": "amx"}, "amx"), ({"GEOSAM_CPU_BF16": "avx512_bf16"}, "avx512_bf16"),
     ({"GEOSAM_CPU_BF16": "none", "GEOSAM_CPU_AMX": "1"}, None), ({"GEOSAM_CPU_AMX": "1"}, "amx"),
     ({"GEOSAM_CPU_AMX": "0"}, None)],
)
def test_kind_overrides(monkeypatch, env: dict, kind: str | None) -> None:
    monkeypatch.delenv("GEOSAM_CPU_BF16", raising=False)
    monkeypatch.delenv("GEOSAM_CPU_AMX", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert dev.cpu_bf16_kind() == kind
    assert dev.cpu_has_amx() == (kind == "amx")


@pytest.mark.parametrize(
    ("agreement", "speedup", "expected"),
    [(0.99, 1.3, torch.bfloat16), (0.97, 1.3, torch.float32), (0.99, 0.95, torch.float32), (0.98, 1.01, torch.bfloat16)],
)
def test_bf16_needs_measured_agreement_and_speed(monkeypatch, caplog, agreement, speedup, expected) -> None:
    monkeypatch.setenv("GEOSAM_CPU_BF16", "avx512_bf16")
    monkeypatch.setitem(dev.BF16_MEASURED, "avx512_bf16", {"mask_agreement": agreement, "speedup_vs_float32": speedup})
    with caplog.at_level(logging.INFO, logger="geosam.models.device"):
        assert dev.resolve_dtype("auto", "cpu") == expected
    assert "avx512_bf16" in caplog.text and str(expected).replace("torch.", "") in caplog.text
    assert dev.resolve_dtype("float32", "cpu") == torch.float32  # an explicit dtype is kept
    assert dev.resolve_dtype("auto", "cuda") == torch.float16


def test_no_native_bf16_is_float32(monkeypatch, caplog) -> None:
    monkeypatch.setenv("GEOSAM_CPU_BF16", "none")
    with caplog.at_level(logging.INFO, logger="geosam.models.device"):
        assert dev.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert "no native bf16" in caplog.text


def test_measured_table_covers_every_kind() -> None:
    assert set(dev.BF16_MEASURED) == {"amx", "avx512_bf16"}
    assert dev.BF16_MEASURED["amx"]["mask_agreement"] >= dev.MIN_BF16_MASK_AGREEMENT
