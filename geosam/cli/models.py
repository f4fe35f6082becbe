"""``geosam models``: the model families, the default checkpoint of each, and which are in the local cache."""

from __future__ import annotations

import click

from geosam.cli.common import handle_errors
from geosam.cli.help import GroupedCommand


def cached_repos() -> set[str] | None:
    """Model ids in the local Hugging Face cache (no network), or None when the cache cannot be read."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir()
    except CacheNotFound:  # no cache folder yet: nothing cached
        return set()
    except Exception:  # noqa: BLE001 - no cache folder, unreadable cache: reported as unknown
        return None
    return {r.repo_id for r in info.repos if r.repo_type == "model"}


@click.command(cls=GroupedCommand)
@handle_errors
def models() -> None:
    """List the model families geosam knows, each default checkpoint, and whether it is cached locally."""
    from geosam.models.families import FAMILIES

    cached = cached_repos()
    click.echo(f"{'family':<11} {'transformers class':<29} {'default checkpoint':<34} {'cached':<7} modes")
    for f in FAMILIES:
        if f.name == "litemedsam":
            state = "built-in"
        elif cached is None:
            state = "?"
        else:
            state = "yes" if f.default in cached else "no"
        click.echo(f"{f.name:<11} {f.model_class:<29} {f.default:<34} {state:<7} {f.modes}")
    others = sorted(cached - {f.default for f in FAMILIES}) if cached else []
    if others:
        click.echo("other cached models: " + ", ".join(others))
    click.echo("Fetch one on a machine with network: hf download <checkpoint>; then --model <checkpoint> "
               "(with HF_HUB_OFFLINE=1) or --model PATH of a save_pretrained folder.")
