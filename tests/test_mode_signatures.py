"""The twin entry points of each mode take the same arguments: ``segment_X_to_file`` is ``segment_X`` plus
``output`` (positional, where the API puts it) and the keyword ``layer``, with the same defaults and annotations.

The pairs are written out in full (so that mypy checks every call and the API page shows every keyword); this
test keeps them from drifting apart, as text mode once lost resume and Dask by forwarding only some options.
"""

from __future__ import annotations

import inspect

import pytest

from geosam.modes import everything, prompted, text
from geosam.run.summary import RunSummary

PAIRS = [
    (everything.segment_scene, everything.segment_scene_to_file, 1),  # (scene, output, mask_generator, ...)
    (prompted.segment_prompts, prompted.segment_prompts_to_file, 2),  # (scene, prompts, output, ...)
    (text.segment_text, text.segment_text_to_file, 1),  # (scene, output, phrases, ...)
]

#: the run options every mode takes (`geosam.modes.runner.RunOptions`) and the flat settings
RUN_OPTIONS = ["config", "object_hooks", "journal", "scheduler", "n_workers", "settings"]


def _params(fn) -> list[inspect.Parameter]:
    return list(inspect.signature(fn).parameters.values())


@pytest.mark.parametrize(("frame_fn", "file_fn", "at"), PAIRS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_to_file_is_the_frame_function_plus_output_and_layer(frame_fn, file_fn, at) -> None:
    frame, to_file = _params(frame_fn), _params(file_fn)
    output = to_file[at]
    assert (output.name, output.kind) == ("output", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    assert output.default is inspect.Parameter.empty
    layer = next(p for p in to_file if p.name == "layer")
    assert (layer.kind, layer.default) == (inspect.Parameter.KEYWORD_ONLY, None)
    rest = [p for p in to_file if p.name not in ("output", "layer")]
    assert [(p.name, p.kind, p.default, p.annotation) for p in rest] == \
        [(p.name, p.kind, p.default, p.annotation) for p in frame]


@pytest.mark.parametrize(("frame_fn", "file_fn", "at"), PAIRS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_every_mode_takes_the_run_options_and_has_one_return_type(frame_fn, file_fn, at) -> None:
    for fn in (frame_fn, file_fn):
        names = [p.name for p in _params(fn)]
        assert names[-len(RUN_OPTIONS):] == RUN_OPTIONS, fn.__name__
    assert inspect.signature(frame_fn).return_annotation == "gpd.GeoDataFrame"
    assert inspect.signature(file_fn).return_annotation == RunSummary.__name__
