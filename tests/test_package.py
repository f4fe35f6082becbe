"""Package-level promises: a fast import, lazy public names, one error hierarchy."""

import subprocess
import sys

import geosam


def test_import_is_light():
    code = "import sys, geosam; print(sorted(m for m in ('torch', 'transformers', 'geopandas', 'dask') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_lazy_names_resolve():
    for name in geosam._LAZY:
        assert getattr(geosam, name) is not None


def test_errors_share_one_base():
    for name in ("InvalidRasterError", "NoCRSError", "BandError", "ConfigError", "ModelLoadError",
                 "PromptError", "PromptOutsideSceneError", "ExportError"):
        assert issubclass(getattr(geosam, name), geosam.GeosamError)
