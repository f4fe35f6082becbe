"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest

# dtype="auto" would pick bf16 autocast on CPUs with AMX: keep tests exact and machine-independent
# (tests of the choice itself set GEOSAM_CPU_AMX with monkeypatch)
os.environ.setdefault("GEOSAM_CPU_AMX", "0")

from tests._tiny_sam import build_tiny_sam


@pytest.fixture(scope="session")
def tiny_sam_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random-weight SAM checkpoint directory (model + processor)."""
    return build_tiny_sam(tmp_path_factory.mktemp("tiny_sam"))
