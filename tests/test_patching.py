"""geosam.models.patching: a shared object's attribute set while callers are inside, as it was after the last."""

from __future__ import annotations

import threading

import pytest

from geosam.models import patching
from geosam.models.patching import set_while


class _Thing:
    def __init__(self) -> None:
        self.own = 1
        self._prop = "a"

    def method(self) -> str:
        return "class"

    @property
    def prop(self) -> str:
        return self._prop

    @prop.setter
    def prop(self, value: str) -> None:
        self._prop = value


def test_own_attribute_property_and_method_set_back() -> None:
    t = _Thing()
    with set_while(t, "own", 2), set_while(t, "prop", "b"), set_while(t, "method", lambda: "instance"):
        assert (t.own, t.prop, t.method()) == (2, "b", "instance")
    assert (t.own, t.prop, t.method()) == (1, "a", "class")
    assert "method" not in vars(t)  # the class's method again, not a copy of it kept on the instance
    assert not patching._USERS


def test_nested_and_concurrent_callers_set_back_once_by_the_last_errors_included() -> None:
    t = _Thing()
    with set_while(t, "own", 2):
        with set_while(t, "own", 2):
            assert t.own == 2
        assert t.own == 2
    assert t.own == 1
    with pytest.raises(RuntimeError, match="boom"), set_while(t, "own", 3):
        raise RuntimeError("boom")
    assert t.own == 1 and not patching._USERS
    inside, leave = threading.Barrier(4), threading.Event()

    def user() -> None:
        with set_while(t, "method", lambda: "instance"):
            inside.wait()
            leave.wait()

    threads = [threading.Thread(target=user) for _ in range(3)]
    for th in threads:
        th.start()
    inside.wait()
    assert t.method() == "instance"
    leave.set()
    for th in threads:
        th.join()
    assert t.method() == "class" and "method" not in vars(t) and not patching._USERS
