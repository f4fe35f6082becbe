"""The type gate: mypy (configured in pyproject.toml) finds no error in geosam/.

mypy starts in the background as soon as this test is selected (tests/conftest.py, tests/_background.py), so that it
runs while the other tests do; this test waits for its result.
"""

from __future__ import annotations

from tests import _background


def test_mypy_is_clean() -> None:
    code, out = _background.result("mypy", _background.MYPY)
    assert code == 0, f"mypy found problems:\n{out}"
