"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# under pytest-xdist (make test: -n 2), the cores are shared by the workers: torch in each worker and in the
# processes it starts (CLI runs, Dask workers) gets its share, not every core (oversubscribed OpenMP threads spin)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

# dtype="auto" would pick bf16 autocast on CPUs with AMX: keep tests exact and machine-independent
# (tests of the choice itself set GEOSAM_CPU_AMX with monkeypatch)
os.environ.setdefault("GEOSAM_CPU_AMX", "0")

from tests import _background
from tests._stac_fixtures import stac_catalog, stac_served  # noqa: F401 - the STAC tests' catalog and server
from tests._tiny_sam import build_tiny_sam


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist: the mypy test first, then the tests marked slow (the same order on every worker), so that a
    worker runs mypy while the others run the rest, and no long test starts last while the other workers idle
    (longest first: the tail is a short test's)."""
    if _WORKERS > 1:
        items.sort(key=lambda item: (item.nodeid != _background.MYPY_TEST, item.get_closest_marker("slow") is None))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start mypy in the background when its test is selected; it runs while the other tests do.

    Not under pytest-xdist: every worker collects every test, and the worker that runs the test runs mypy then.
    """
    if _WORKERS <= 1 and any(item.nodeid == _background.MYPY_TEST for item in session.items):
        _background.start("mypy", _background.MYPY)


def pytest_sessionfinish(session: pytest.Session) -> None:
    _background.stop_all()


@pytest.fixture(scope="session")
def tiny_sam_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random-weight SAM checkpoint directory (model + processor)."""
    return build_tiny_sam(tmp_path_factory.mktemp("tiny_sam"))


@pytest.fixture(scope="session")
def tiny_family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tiny random-weight SAM-HQ and SAM 2 checkpoint directories, by family."""
    from tests._tiny_families import build_tiny_sam2, build_tiny_sam_hq

    return {"sam_hq": build_tiny_sam_hq(tmp_path_factory.mktemp("tiny_sam_hq")),
            "sam2": build_tiny_sam2(tmp_path_factory.mktemp("tiny_sam2"))}


@pytest.fixture(scope="session")
def tiny_sam3_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random-weight SAM 3 checkpoint directory (model, CLIP tokenizer, preprocessor config)."""
    from tests._tiny_families import build_tiny_sam3

    return build_tiny_sam3(tmp_path_factory.mktemp("tiny_sam3"))


@pytest.fixture(scope="session")
def oracle_scene_600(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The 600 x 500 px oracle scene with 40 objects (seed 11) that several modules share (read only)."""
    from tests.data.make_scenes import make_oracle_scene

    return make_oracle_scene(tmp_path_factory.mktemp("oracle_600"), width=600, height=500, n_objects=40, seed=11)


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """A ``distributed.Client`` of a LocalCluster with two worker processes, one thread each.

    Started once per session (each start spawns two processes that import geosam: seconds), shared by the
    Dask tests (tests/test_distributed.py, tests/test_distributed_stac.py, one in tests/test_monitor_segment.py);
    skipped without ``dask[distributed]``. Under pytest-xdist each worker that runs one starts its own: the Dask
    test files sort together and early, so that they start on one worker (its first share of the tests).
    """
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
            distributed.Client(cl) as client:
        yield client


# ---------------------------------------------------------------------------
# user-mistake tests (tests/test_user_mistakes*.py): each module defines its own ``base`` folder


@pytest.fixture
def case(base: Path, tmp_path: Path) -> Path:
    """A fresh copy of the module's ``base`` folder for one case."""
    for p in base.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    return tmp_path


@pytest.fixture
def model_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every model load attempt is recorded (and fails): the list must stay empty for early mistakes."""
    import geosam.models
    import geosam.models.registry
    import geosam.modes.everything
    import geosam.segment.everything

    calls: list[str] = []

    def spy(name: Any = None, *args: Any, **kwargs: Any) -> Any:
        calls.append(str(name))
        raise AssertionError(f"model {name!r} loaded")

    for mod in (geosam.models, geosam.models.registry, geosam.segment.everything):
        monkeypatch.setattr(mod, "load_model", spy)
    monkeypatch.setattr(geosam.modes.everything, "make_mask_generator", spy)
    return calls


@pytest.fixture
def count_calls(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``count_calls(module, name)``: ``module.name`` still runs, and each call appends to the list returned."""

    def attach(module: Any, name: str) -> list[int]:
        calls: list[int] = []
        orig = getattr(module, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return orig(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
        return calls

    return attach


@pytest.fixture
def call_results(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``call_results(module, name)``: ``module.name`` still runs, and what each call returns is appended to the list
    returned (e.g. a kernel's wrapper that returns None, or False, where the kernel did not run)."""

    def attach(module: Any, name: str) -> list[Any]:
        results: list[Any] = []
        orig = getattr(module, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            out = orig(*args, **kwargs)
            results.append(out)
            return out

        monkeypatch.setattr(module, name, spy)
        return results

    return attach
