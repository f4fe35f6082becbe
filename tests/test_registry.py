"""geosam.models: the model-family registry, declared capabilities and the package's import structure."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from geosam import models as gm
from geosam.errors import ConfigError, ModelLoadError
from geosam.models import litemedsam, registry
from geosam.models.bundle import SAM_CAPABILITIES, ModelCapabilities, SamBundle, require

MODELS_DIR = Path(gm.__file__).parent


@pytest.fixture
def fresh_cache():
    gm.clear_model_cache()
    yield
    gm.clear_model_cache()


def _toy_dir(tmp_path: Path, model_type: str) -> str:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return str(tmp_path)


# -- registry -------------------------------------------------------------------


def test_registered_family_is_used_by_load_model(tmp_path, fresh_cache) -> None:
    calls: list[tuple[str, torch.device, torch.dtype]] = []
    toy_caps = ModelCapabilities(point_prompts=False, box_prompts=False, segment_everything=False,
                                 text_prompts=True, family="toy")

    def load_toy(name: str, device: torch.device, dtype: torch.dtype) -> SamBundle:
        calls.append((name, device, dtype))
        return SamBundle(model=torch.nn.Identity(), processor=None, device=device, dtype=dtype, name=name,
                         capabilities=toy_caps)

    path = _toy_dir(tmp_path, "toy_sam")
    registry.register_family("toy", matches="toy_sam", loader=load_toy)
    try:
        assert "toy" in registry.families()
        b = gm.load_model(path, device="cpu", dtype="float32")
        assert calls == [(path, torch.device("cpu"), torch.float32)]
        assert b.capabilities.family == "toy" and b.capabilities.text_prompts
        assert gm.load_model(path, device="cpu", dtype="float32") is b  # cached, and load_model is the same loader
        assert len(calls) == 1
    finally:
        registry.unregister_family("toy")
    assert "toy" not in registry.families()


def test_family_matched_by_name_needs_no_checkpoint(fresh_cache) -> None:
    def load(name: str, device: torch.device, dtype: torch.dtype) -> SamBundle:
        return SamBundle(model=torch.nn.Identity(), processor=None, device=device, dtype=dtype, name=name)

    # "toy-builtin" is neither a directory nor a hub checkpoint: only the by-name pass can find it
    registry.register_family("toy-builtin", matches=lambda name, config: name == "toy-builtin", loader=load)
    try:
        assert gm.load_model("toy-builtin", device="cpu").name == "toy-builtin"
    finally:
        registry.unregister_family("toy-builtin")


def test_unknown_model_type_names_the_model(tmp_path, fresh_cache) -> None:
    path = _toy_dir(tmp_path, "bert")
    with pytest.raises(ModelLoadError) as err:
        gm.load_model(path, device="cpu")
    msg = str(err.value)
    assert repr(path) in msg
    assert "'bert' model, not a SAM" in msg
    assert "litemedsam" in msg and "sam" in msg  # the families geosam knows


def test_builtin_families() -> None:
    assert set(registry.families()) >= {"sam", "litemedsam"}


# -- capabilities ------------------------------------------------------------------


def test_sam_checkpoint_capabilities(tiny_sam_dir: str) -> None:
    b = gm.load_model(tiny_sam_dir, device="cpu")
    assert b.capabilities == SAM_CAPABILITIES
    assert b.capabilities.family == "sam"
    for what in ("point_prompts", "box_prompts", "segment_everything"):
        require(b, what)  # no error
    with pytest.raises(ConfigError, match="text prompts are not supported"):
        b.require("text_prompts")


@pytest.fixture
def fake_litemedsam(monkeypatch, fresh_cache, tiny_sam_dir: str) -> SamBundle:
    """LiteMedSAM loaded through the registry, with a tiny random SamModel instead of its weights."""
    from transformers import SamModel

    monkeypatch.setattr(litemedsam, "build_model", lambda path=None: SamModel.from_pretrained(tiny_sam_dir).eval())
    return gm.load_model("LiteMedSAM", device="cpu", dtype="float32")


def test_litemedsam_capabilities(fake_litemedsam: SamBundle) -> None:
    caps = fake_litemedsam.capabilities
    assert fake_litemedsam.name == "litemedsam"
    assert (caps.family, caps.box_prompts, caps.point_prompts, caps.segment_everything) == ("litemedsam", True, False, False)
    require(fake_litemedsam, "box_prompts")
    with pytest.raises(ConfigError) as err:
        require(fake_litemedsam, "segment_everything")
    assert str(err.value) == (
        "model 'litemedsam' takes box prompts only: segment-everything needs point prompts; "
        "use `geosam prompt` with boxes, or a SAM checkpoint (--model)"
    )
    with pytest.raises(ConfigError, match="'litemedsam' takes box prompts only: point prompts are not supported"):
        require(fake_litemedsam, "point_prompts")


def test_capabilities_are_validated() -> None:
    with pytest.raises(ValueError, match="segment_everything needs point_prompts"):
        ModelCapabilities(point_prompts=False, box_prompts=True, segment_everything=True, family="x")
    with pytest.raises(ValueError, match="unknown capability"):
        require(SamBundle(model=None, processor=None, device=torch.device("cpu"), dtype=torch.float32, name="x"),
                "everything")
    with pytest.raises(AttributeError):
        SAM_CAPABILITIES.point_prompts = False  # type: ignore[misc]  # frozen


# -- import structure ---------------------------------------------------------------


def _geosam_imports(path: Path) -> set[str]:
    """Every geosam module a source file imports (module level and inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("geosam"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("geosam"):
            for a in node.names:  # `from geosam.models import hf_sam` imports the submodule
                sub = f"{node.module}.{a.name}"
                out.add(sub if (MODELS_DIR.parent / (sub.replace("geosam.", "", 1).replace(".", "/") + ".py")).exists()
                        else node.module)
    return out


def _models_graph() -> dict[str, set[str]]:
    return {f"geosam.models.{p.stem}": _geosam_imports(p) for p in MODELS_DIR.glob("*.py") if p.stem != "__init__"}


def test_litemedsam_does_not_import_the_loading_machinery() -> None:
    imports = _models_graph()["geosam.models.litemedsam"]
    for mod in ("geosam.models.registry", "geosam.models.hf_sam", "geosam.models.runtime", "geosam.models.compile"):
        assert mod not in imports
    assert "geosam.models" not in imports  # the package __init__ imports the registry
    assert {m for m in imports if m.startswith("geosam.models")} <= {"geosam.models.bundle", "geosam.models.tinyvit"}


def test_bundle_imports_nothing_else_from_models() -> None:
    imports = _models_graph()["geosam.models.bundle"]
    assert {m for m in imports if m.startswith("geosam.models")} <= {"geosam.models.device"}


def test_models_package_has_no_import_cycle_and_stays_below_the_engine() -> None:
    graph = _models_graph()
    for mod, deps in graph.items():
        assert not deps & {"geosam.segment", "geosam.modes.everything", "geosam.prompts.parse"}, mod
        assert "geosam.models" not in deps, f"{mod} imports the package __init__"
    done: set[str] = set()

    def visit(mod: str, stack: tuple[str, ...]) -> None:
        assert mod not in stack, " -> ".join((*stack, mod))
        if mod in done:
            return
        for dep in graph.get(mod, ()):
            visit(dep, (*stack, mod))
        done.add(mod)

    for mod in graph:
        visit(mod, ())


def test_auto_dtype_for_sam3_on_cuda_is_bf16_where_the_gpu_has_it(monkeypatch) -> None:
    """dtype="auto" resolves to float16 on CUDA; for SAM 3 it is bf16 where the GPU has bf16 (its reference code runs
    bf16; float16 is not validated), float16 where it has not; explicit dtypes, other families and the CPU as asked."""
    import torch

    from geosam.models.registry import auto_dtype_for_family

    cuda, cpu = torch.device("cuda"), torch.device("cpu")

    def never() -> str:
        raise AssertionError("the family is read only for auto resolved to float16 on CUDA")

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert auto_dtype_for_family(lambda: "sam3", "auto", cuda, torch.float16) == torch.bfloat16
    assert auto_dtype_for_family(lambda: "sam3", " AUTO ", cuda, torch.float16) == torch.bfloat16
    assert auto_dtype_for_family(never, "float16", cuda, torch.float16) == torch.float16
    assert auto_dtype_for_family(lambda: "sam3", torch.float16, cuda, torch.float16) == torch.float16
    assert auto_dtype_for_family(lambda: "sam2", "auto", cuda, torch.float16) == torch.float16
    assert auto_dtype_for_family(never, "auto", cpu, torch.bfloat16) == torch.bfloat16
    assert auto_dtype_for_family(lambda: "sam3", "auto", cpu, torch.float32) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert auto_dtype_for_family(lambda: "sam3", "auto", cuda, torch.float16) == torch.float16

