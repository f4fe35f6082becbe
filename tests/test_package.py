"""Package-level promises: a fast import, lazy public names, one error hierarchy."""

import subprocess
import sys

import geosam


def test_import_is_light():
    code = "import sys, geosam; print(sorted(m for m in ('torch', 'transformers', 'geopandas', 'dask') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_lazy_names_resolve():
    import importlib

    for name, (module, attr) in geosam._LAZY.items():
        assert getattr(geosam, name) is getattr(importlib.import_module(module), attr), name


def test_all_lists_every_public_name():
    # __all__ is written out (static tools cannot see lazy names otherwise): it must stay in step
    assert set(geosam._LAZY) <= set(geosam.__all__)
    assert len(geosam.__all__) == len(set(geosam.__all__))
    for name in geosam.__all__:
        assert hasattr(geosam, name), name


def test_errors_share_one_base():
    for name in ("InvalidRasterError", "NoCRSError", "BandError", "ConfigError", "ModelLoadError",
                 "PromptError", "PromptOutsideSceneError", "ExportError"):
        assert issubclass(getattr(geosam, name), geosam.GeosamError)
