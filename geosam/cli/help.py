"""``--help`` in sections: each option belongs to a group (input, model, segment everything, indices, output, run, ...).

An option's group is its ``group`` attribute (`option(..., group="run")` or ``cls=GroupedOption``), else the
entry for its parameter name in `GROUP_OF` (one table for every command: a name means the same in each), else
"other": a new option always shows, in an "Other options" section, until it is given a group. Commands use
``@click.command(cls=GroupedCommand)``; the ``geosam`` group itself is a `GroupedGroup`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

#: Section titles in the order --help shows them.
SECTIONS: dict[str, str] = {
    "input": "Input",
    "stac": "STAC input",
    "prompts": "Prompts",
    "model": "Model",
    "segment-everything": "Segment everything",
    "text": "Text and exemplars",
    "indices": "Indices",
    "monitor": "Monitoring",
    "output": "Output",
    "outlines": "Outlines",
    "run": "Run",
    "other": "Other options",
}

#: Group of each parameter name (click's ``param.name``) that is not given one where it is declared.
GROUP_OF: dict[str, str] = {
    **dict.fromkeys(
        ["bands", "fill_value", "fill_tolerance", "chip_size_px", "overlap_px", "check"], "input"
    ),
    **dict.fromkeys(
        ["points", "boxes", "prompts_file", "prompt_crs", "layer", "id_column", "label_column", "point_label_column",
         "object_column", "context", "box_grow"],
        "prompts",
    ),
    **dict.fromkeys(["model", "device", "dtype", "compile"], "model"),
    **dict.fromkeys(
        ["points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh", "box_nms_thresh",
         "min_mask_region_area", "crop_n_layers"],
        "segment-everything",
    ),
    **dict.fromkeys(["phrases", "exemplars", "score_threshold", "mask_threshold"], "text"),
    **dict.fromkeys(
        ["band_roles", "reflectance_scale", "reflectance_offset", "indices", "index_thresholds", "min_index",
         "rank_by", "top_k", "prefilter", "prefilter_radius_px"],
        "indices",
    ),
    **dict.fromkeys(
        ["output", "output_dir", "merge", "fmt", "to_crs", "min_area_m2", "overlay", "label_raster", "index_raster",
         "overwrite", "as_json"],
        "output",
    ),
    **dict.fromkeys(
        ["progress", "scheduler", "n_workers", "chips_per_batch", "prefetch_chips", "skip_bad_chips", "profile",
         "resume", "keep_journal", "verbose"],
        "run",
    ),
}


class GroupedOption(click.Option):
    """A click option with a ``group``: the --help section it is listed in (a key of `SECTIONS`)."""

    def __init__(self, *args: Any, group: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group


def option(*param_decls: str, group: str, **kwargs: Any) -> Callable[[Any], Any]:
    """`click.option` listed in the --help section `group` (a key of `SECTIONS`)."""
    return click.option(*param_decls, cls=GroupedOption, group=group, **kwargs)


def group_of(param: click.Parameter) -> str:
    """The --help section of `param`: its own ``group``, else `GROUP_OF`'s entry for its name, else "other"."""
    return getattr(param, "group", None) or GROUP_OF.get(param.name or "", "other")


def format_grouped_options(command: click.Command, ctx: click.Context, formatter: click.HelpFormatter) -> None:
    """Write `command`'s options into `formatter`, one section per group, in the order of `SECTIONS`.

    Unknown group names follow the known ones, titled by their name; with only "other" options (e.g. --help
    alone) the one section is titled "Options", as click's own.
    """
    rows: dict[str, list[tuple[str, str]]] = {}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None and not isinstance(param, click.Argument):
            rows.setdefault(group_of(param), []).append(record)
    order = [g for g in SECTIONS if g in rows and g != "other"] + sorted(set(rows) - set(SECTIONS))
    order += ["other"] if "other" in rows else []
    for name in order:
        title = "Options" if order == ["other"] else SECTIONS.get(name, name.replace("-", " ").capitalize())
        with formatter.section(title):
            formatter.write_dl(rows[name])


class GroupedCommand(click.Command):
    """A click command whose --help lists its options in sections by group (see `format_grouped_options`)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        format_grouped_options(self, ctx, formatter)


class GroupedGroup(click.Group):
    """A click group whose own options are listed in sections like `GroupedCommand`'s, then its commands."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        format_grouped_options(self, ctx, formatter)
        self.format_commands(ctx, formatter)


__all__ = ["GROUP_OF", "SECTIONS", "GroupedCommand", "GroupedGroup", "GroupedOption", "group_of", "option"]
