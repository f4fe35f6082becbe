"""``geosam segment`` over many scenes: one output per scene (``--output-dir``) or ``--merge``d,
one line per scene and an overall progress bar."""

from __future__ import annotations

import sys
from typing import Any

import click

from geosam.config import SegmentConfig
from geosam.run.summary import RunSummary


def segment_many(paths: list[Any], cfg: SegmentConfig, *, output: str | None, output_dir: str | None, merge: bool,
                 resume: bool, scheduler: str | None, n_workers: int | None, fmt: str) -> None:
    """Segment ``paths`` (raster paths or STAC scenes) one after the other; one line per scene under an overall
    bar (``--progress``, on stderr, beside the chip bar of the scene at work); exit code 1 when any failed."""
    from geosam.modes.scenes import segment_scenes
    from geosam.progress import tqdm_auto

    tqdm = tqdm_auto()

    if output_dir is None and not (merge and output):
        raise click.UsageError("many scenes need --output-dir DIR (one file per scene) or --merge -o FILE")
    total = len(paths)
    done = [0]
    bar = tqdm(total=total, desc="scenes", unit="scene", disable=not cfg.engine.progress, file=sys.stderr)

    def line(scene: str, st: RunSummary | None, error: str | None) -> None:
        done[0] += 1
        head = f"[{done[0]}/{total}] {scene}:"
        if st is None:
            text, err = f"{head} failed: {error}", True
        else:
            text, err = f"{head} {st.objects} objects, {st.chips_total} chips, {st.seconds:.1f} s", False
        if bar.disable:
            click.echo(text, err=err)
        else:  # above the bars, which are redrawn below it
            tqdm.write(text, file=sys.stderr if err else sys.stdout)
        bar.update(1)

    try:
        res = segment_scenes(paths, config=cfg, output_dir=output_dir, merge=merge, output=output, ext=fmt,
                             resume=resume, scheduler=scheduler, n_workers=n_workers, on_scene=line)
    finally:
        bar.close()
    for scene, path in res.outputs.items():
        if scene == "*":
            click.echo(f"{path}: {0 if res.merged is None else len(res.merged)} objects from "
                       f"{total - len(res.failed)} scenes")
    click.echo(f"{total - len(res.failed)} of {total} scenes done" + (f", {len(res.failed)} failed" if res.failed else ""))
    if res.failed:
        sys.exit(1)
