"""Entry point: ``geosam COMMAND ...``. One module per command."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from geosam import __version__
from geosam.errors import GeosamError


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn geosam errors into a one-line message and exit code 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GeosamError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)

    return wrapper


@click.group()
@click.version_option(__version__, prog_name="geosam")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Segment satellite and aerial scenes into georeferenced vector objects."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from geosam.cli.info import info
    from geosam.cli.prompt import prompt
    from geosam.cli.segment import segment

    cli.add_command(info)
    cli.add_command(segment)
    cli.add_command(prompt)


_register()

if __name__ == "__main__":  # pragma: no cover
    cli()
