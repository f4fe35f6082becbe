"""Click parameter types and option groups shared by the commands (names follow the Python API)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from geosam.config import AmgConfig, EngineConfig, ModelConfig, OutputConfig, ReadConfig

F = Callable[..., Any]


class NumberList(click.ParamType):
    """'3,2,1' -> (3, 2, 1); ``count`` fixes how many numbers."""

    name = "numbers"

    def __init__(self, kind: type = float, count: int | None = None) -> None:
        self.kind, self.count = kind, count

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            out = tuple(self.kind(t) for t in str(value).replace(" ", "").split(",") if t != "")
        except ValueError:
            self.fail(f"must be comma-separated numbers, got {value!r}", param, ctx)
        if not out or (self.count is not None and len(out) != self.count):
            self.fail(f"needs {self.count or 'some'} comma-separated numbers, got {value!r}", param, ctx)
        return out


class CoordinateList(click.ParamType):
    """'x,y;x,y' -> ((x, y), (x, y)), ``count`` numbers per item."""

    name = "coordinates"

    def __init__(self, count: int) -> None:
        self.count = count

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        items = [item for item in str(value).split(";") if item.strip()]
        return tuple(NumberList(float, self.count).convert(item, param, ctx) for item in items)


class KeyValue(click.ParamType):
    """'ndvi=0.3' -> ('ndvi', 0.3)."""

    name = "key=value"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        key, sep, num = str(value).partition("=")
        if not sep or not key:
            self.fail(f"looks like name=number (e.g. ndvi=0.3), got {value!r}", param, ctx)
        try:
            return key.strip(), float(num)
        except ValueError:
            self.fail(f"needs a number after '=', got {value!r}", param, ctx)


def _apply(options: list[F]) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return decorate


_R, _M, _E, _O, _A = ReadConfig(), ModelConfig(), EngineConfig(), OutputConfig(), AmgConfig()

#: the model image's bands
bands_option = click.option("--bands", type=NumberList(int),
                            help="1-based bands for the model image, e.g. 3,2,1 (1 or 3 bands).")

#: reading: bands, fill value
read_options = _apply([
    bands_option,
    click.option("--fill-value", type=NumberList(float),
                 help="Pixels whose bands all equal this (e.g. 255 or 255,255,255) are invalid."),
    click.option("--fill-tolerance", type=float, default=_R.fill_tolerance, show_default=True,
                 help="Tolerance for --fill-value."),
])


def model_options(default_model: str) -> Callable[[F], F]:
    """--model, --device, --dtype."""
    return _apply([
        click.option("--model", default=default_model, show_default=True,
                     help="A SAM checkpoint id or local directory, or litemedsam (built in, offline, box prompts)."),
        click.option("--device", default=_M.device, show_default=True,
                     type=click.Choice(["auto", "cpu", "cuda", "mps"])),
        click.option("--dtype", default=_M.dtype, show_default=True,
                     type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
                     help="auto: fp16 on CUDA (SAM 3: bf16 where the GPU has it); on a CPU bf16 only where native bf16 was "
                     "measured faster with the same masks (agreement >= 0.98), else float32; decided once per run. "
                     "float32: the reference's masks."),
    ])


#: segment everything: SAM's own parameter names
amg_options = _apply([
    click.option("--points-per-side", type=int, default=_A.points_per_side, show_default=True),
    click.option("--points-per-batch", type=int, default=_A.points_per_batch, show_default=True),
    click.option("--pred-iou-thresh", type=float, default=_A.pred_iou_thresh, show_default=True),
    click.option("--stability-score-thresh", type=float, default=_A.stability_score_thresh, show_default=True),
    click.option("--box-nms-thresh", type=float, default=_A.box_nms_thresh, show_default=True),
    click.option("--min-mask-region-area", type=int, default=_A.min_mask_region_area, show_default=True,
                 help="Remove islands and holes smaller than this (px)."),
    click.option("--crop-n-layers", type=int, default=_A.crop_n_layers, show_default=True,
                 help="Also segment 4, 16, ... crops per chip (small objects)."),
])

#: output: CRS, overlay, progress, overwrite
output_options = _apply([
    click.option("--to-crs", help="Output CRS (default: the scene's), e.g. EPSG:4326."),
    click.option("--overlay", type=click.Path(dir_okay=False), help="Also write a PNG of the polygons over the image."),
    click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar over chips."),
    click.option("--overwrite", is_flag=True,
                 help="Replace existing output files (atomically: the old file stays until the new one is complete)."),
])

#: ``--format`` of ``segment``, ``prompt`` and ``text``: the file type of the outputs written per scene (checked by
#: `check_output_choice`)
format_option = click.option("--format", "fmt", default=".gpkg", show_default=True,
                             help="File suffix of --output-dir outputs: .gpkg, .geojson, .shp or .parquet.")


def check_output_choice(output: str | None, output_dir: str | None, fmt: str) -> str:
    """The ``--format`` suffix (``gpkg`` -> ``.gpkg``), checked; a UsageError for ``-o`` with ``--output-dir``
    (which one?), an unknown format, or an explicit ``--format`` that contradicts ``-o``'s extension. Reads nothing,
    so a command calls it before any scene or model."""
    from pathlib import Path

    from geosam.write.vector import VECTOR_FORMATS

    ctx = click.get_current_context()
    if output is not None and output_dir is not None:
        one = "one file, or --merge" if "merge" in ctx.params else "one scene"
        raise click.UsageError(f"give -o/--output FILE ({one}) or --output-dir DIR (one file per scene), not both")
    fmt = fmt if fmt.startswith(".") else f".{fmt}"
    if fmt.lower() not in VECTOR_FORMATS:
        raise click.UsageError(f"--format {fmt}: unknown vector format; use one of {', '.join(sorted(VECTOR_FORMATS))}")
    explicit = ctx.get_parameter_source("fmt") not in (None, click.core.ParameterSource.DEFAULT)
    if explicit and output is not None and Path(output).suffix.lower() != fmt.lower():
        raise click.UsageError(f"--format {fmt} names the type of --output-dir files; -o {output} is written as "
                               f"its extension says ({Path(output).suffix or 'none'}): drop --format or change -o")
    return fmt


#: Dask: --scheduler, --workers (as ``segment``)
dask_options = _apply([
    click.option("--scheduler", help="Run the chips on Dask: 'local' (a local cluster of --workers processes) or a "
                 "scheduler address such as tcp://host:8786 (needs geosam-scenes[dask])."),
    click.option("--workers", "n_workers", type=int, help="Worker processes of --scheduler local (default 2)."),
])

#: resume: --resume, --keep-journal (as ``segment``)
resume_options = _apply([
    click.option("--resume", is_flag=True, help="Journal finished chips in OUTPUT.geosam-journal; a rerun after a "
                 "crash replays them and runs only the rest."),
    click.option("--keep-journal", is_flag=True, help="With --resume: keep the journal after a successful write."),
])


__all__ = ["CoordinateList", "KeyValue", "NumberList", "amg_options", "bands_option", "check_output_choice",
           "dask_options", "format_option", "model_options", "output_options", "read_options", "resume_options"]
