"""Attributes of a shared model set while calls run, set back when the last caller leaves.

Several threads may run one model (a bundle shared by the tile workers): `set_while` counts the callers inside per
(object, attribute), sets the value when the first enters and puts the original back (or removes an attribute the
object did not have in its own ``__dict__``) when the last leaves, so that a model pickled or saved afterwards is the
model as loaded.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["set_while"]

_LOCK = threading.Lock()
_MISSING = object()
# (id(obj), name) -> [obj, callers inside, the object's own value before (or _MISSING)]
_USERS: dict[tuple[int, str], list[Any]] = {}


@contextlib.contextmanager
def set_while(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Inside: ``obj.<name>`` is ``value``; set back when the last caller sharing ``obj`` leaves. Callers entering
    while others are inside must give the same value (they share one model's setting)."""
    key = (id(obj), name)
    with _LOCK:
        entry = _USERS.get(key)
        if entry is None:
            # an attribute of the object's own or a property: its value to put back; a method or other class attribute
            # the instance's value shadows: removed again
            own = name in getattr(obj, "__dict__", {}) or hasattr(getattr(type(obj), name, None), "__set__")
            entry = _USERS[key] = [obj, 0, getattr(obj, name) if own else _MISSING]
            setattr(obj, name, value)
        entry[1] += 1
    try:
        yield
    finally:
        with _LOCK:
            entry[1] -= 1
            if entry[1] == 0:
                del _USERS[key]
                if entry[2] is _MISSING:
                    delattr(obj, name)
                else:
                    setattr(obj, name, entry[2])
