"""``geosam segment`` over many scenes: one output per scene (``--output-dir``) or ``--merge``d."""

from __future__ import annotations

import sys
from typing import Any

import click

from geosam.config import SegmentConfig


def segment_many(paths: list[str], cfg: SegmentConfig, *, output: str | None, output_dir: str | None, merge: bool,
                 resume: bool, scheduler: str | None, n_workers: int | None, fmt: str) -> None:
    """Segment ``paths`` one after the other; one line per scene; exit code 1 when any failed."""
    from geosam.scenes import segment_scenes

    if output_dir is None and not (merge and output):
        raise click.UsageError("many scenes need --output-dir DIR (one file per scene) or --merge -o FILE")
    total = len(paths)
    done = [0]

    def line(scene: str, gdf: Any, error: str | None) -> None:
        done[0] += 1
        head = f"[{done[0]}/{total}] {scene}:"
        if error is not None:
            click.echo(f"{head} failed: {error}", err=True)
        else:
            st = gdf.attrs.get("geosam", {})
            click.echo(f"{head} {len(gdf)} objects, {st.get('chips_total', 0)} chips, {st.get('seconds', 0.0):.1f} s")

    res = segment_scenes(paths, config=cfg, output_dir=output_dir, merge=merge, output=output, ext=fmt,
                         resume=resume, scheduler=scheduler, n_workers=n_workers, on_scene=line)
    for scene, path in res.outputs.items():
        if scene == "*":
            click.echo(f"{path}: {0 if res.merged is None else len(res.merged)} objects from "
                       f"{total - len(res.failed)} scenes")
    click.echo(f"{total - len(res.failed)} of {total} scenes done" + (f", {len(res.failed)} failed" if res.failed else ""))
    if res.failed:
        sys.exit(1)
