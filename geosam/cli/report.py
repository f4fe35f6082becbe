"""What the segment-everything and text commands do after a run: the extras read back from the
written output (label raster, overlay) and the summary lines."""

from __future__ import annotations

from typing import Any

import click

from geosam.run.summary import RunSummary

#: Stage order of ``--profile`` (stages a run did not time are left out; others follow).
PROFILE_STAGES = ("read", "stretch", "encode", "decode", "filter", "upsample", "nms", "postprocess", "generate",
                  "stitch", "polygonise")


def write_extras(scene: str, output: str, *, label_raster: str | None, overlay: str | None, bands: Any) -> None:
    """Write the label raster and the overlay of a run from its written output (read back).

    Args:
        scene: The segmented raster.
        output: The run's vector file.
        label_raster: Write an instance-label GeoTIFF here (None: no).
        overlay: Write a PNG of the objects over the scene here (None: no).
        bands: The bands shown in the overlay.
    """
    if not (label_raster or overlay):
        return
    from geosam.plot.overlay import render_overlay
    from geosam.write.label_raster import write_label_raster
    from geosam.write.vector import read_vector

    gdf = read_vector(output)
    if label_raster:
        write_label_raster(gdf, label_raster, like_path=scene)
    if overlay:
        render_overlay(scene, gdf, overlay, bands=bands)


def report(summary: RunSummary, profile: bool) -> None:
    """Echo the run's summary lines (warnings about failed chips on stderr).

    Args:
        summary: The run statistics (of a run written to ``summary.output``).
        profile: Also echo the seconds per stage.
    """
    s = summary
    click.echo(f"{s.output}: {s.objects} objects, {s.chips_total} chips ({s.chips_skipped_invalid} skipped as "
               f"invalid), {s.seconds:.1f} s")
    if s.chips_replayed:
        click.echo(f"resumed: {s.chips_replayed} chips taken from the journal")
    for failed in s.chips_failed:
        click.echo(f"warning: chip {failed['chip_id']} could not be read: {failed['error']}", err=True)
    if s.chips_failed and s.output is not None:
        from geosam.write.failed_chips import sidecar_path

        click.echo(f"warning: {len(s.chips_failed)} chips skipped; objects touching them have complete = False; "
                   f"their footprints are in {sidecar_path(s.output)}", err=True)
    outline = s.details.get("outline")
    if outline:
        click.echo(f"outlines: {outline['changed']} of {outline['objects']} changed, {outline['vertices_before']} -> "
                   f"{outline['vertices_after']} vertices, {outline['seconds']:.1f} s")
    if profile:
        click.echo(format_profile(dict(s.timings_s), s.seconds))
    if s.prompts_total:
        click.echo(f"prefilter: {s.prompts_skipped_prefilter} of {s.prompts_total} prompts and "
                   f"{s.chips_skipped_prefilter} chips skipped")


def format_profile(timings: dict[str, float], total_s: float) -> str:
    """A table of seconds per stage.

    ``generate`` is the model's wall time (encode ... postprocess are inside it); ``read`` and
    ``stretch`` run in the reader thread, overlapping the model; ``stitch`` (matching and merging
    across seams) and ``polygonise`` (finished objects to polygons) are apart.

    Args:
        timings: Seconds per stage.
        total_s: The run's wall time (s).

    Returns:
        The table, one line per stage.
    """
    names = [s for s in PROFILE_STAGES if s in timings] + sorted(set(timings) - set(PROFILE_STAGES))
    lines = ["stage          seconds"]
    lines += [f"{n:<14} {timings[n]:8.2f}" for n in names]
    lines.append(f"{'total (wall)':<14} {total_s:8.2f}")
    return "\n".join(lines)


__all__ = ["PROFILE_STAGES", "format_profile", "report", "write_extras"]
