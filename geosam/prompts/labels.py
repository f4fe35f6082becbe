"""Positive / negative labels of prompt points and exemplar boxes: one parser, one set of spellings.

A point prompt's ``point_label`` (`geosam.prompts.parse`) and an exemplar box's ``label``
(`geosam.prompts.exemplars`) say whether it marks the object (positive, foreground) or what is
not the object (negative, background). Both are read by `parse_label`, which accepts:

==========  ===========================================================================
positive    1, 1.0, True, and the words 1, true, t, yes, y, positive, pos, fg, foreground,
            +, include, in (case and surrounding blanks ignored)
negative    0, 0.0, False, and the words 0, false, f, no, n, negative, neg, bg, background,
            -, exclude, out
missing     None or NaN: positive (the default)
==========  ===========================================================================

Anything else raises `geosam.errors.PromptError` naming the prompt or row.
"""

from __future__ import annotations

import math
from typing import Any

from geosam.errors import PromptError

#: spellings of a positive label (lower case)
POSITIVE = frozenset({"1", "true", "t", "yes", "y", "positive", "pos", "fg", "foreground", "+", "include", "in"})
#: spellings of a negative label (lower case)
NEGATIVE = frozenset({"0", "false", "f", "no", "n", "negative", "neg", "bg", "background", "-", "exclude", "out"})


def parse_label(value: Any, where: str) -> bool:
    """Whether a point or box label is positive (see the module docstring for the spellings).

    Args:
        value: The label: a number, a bool, a string, a numpy scalar, None or NaN (positive).
        where: The prompt or row, named in the error.

    Returns:
        True for positive, False for negative.

    Raises:
        PromptError: ``value`` is neither.
    """
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    if isinstance(value, bool) or (isinstance(value, (int, float)) and float(value) in (0.0, 1.0)):
        return bool(value)
    text = str(value).strip().lower()
    if text in POSITIVE:
        return True
    if text in NEGATIVE:
        return False
    raise PromptError(f"{where}: label {value!r} is neither positive (1, true, positive, fg, ...) nor negative "
                      "(0, false, negative, bg, ...)")


__all__ = ["NEGATIVE", "POSITIVE", "parse_label"]
