"""Entry point: ``geosam COMMAND ...``. One module per command."""

from __future__ import annotations

import logging

import click

from geosam import __version__
from geosam.cli.help import GroupedGroup


@click.group(cls=GroupedGroup)
@click.version_option(__version__, prog_name="geosam")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Segment satellite and aerial scenes into georeferenced vector objects."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from geosam.cli.info import info
    from geosam.cli.models import models
    from geosam.cli.prompt import prompt
    from geosam.cli.segment import segment
    from geosam.cli.text import text

    cli.add_command(info)
    cli.add_command(segment)
    cli.add_command(prompt)
    cli.add_command(text)
    cli.add_command(models)


_register()

if __name__ == "__main__":  # pragma: no cover
    cli()
