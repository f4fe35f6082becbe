"""Entry point: ``geosam COMMAND ...``. One module per command."""

from __future__ import annotations

import logging
import os

import click

from geosam import __version__
from geosam.cli.help import GroupedGroup


class _EchoHandler(logging.Handler):
    """Log records as plain lines on the current stderr (looked up at each record, as click does)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


@click.group(cls=GroupedGroup)
@click.version_option(__version__, prog_name="geosam")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Segment satellite and aerial scenes into georeferenced vector objects."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose == 0:  # Dask's INFO lines (here and in its worker processes) only with -v
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    plan = logging.getLogger("geosam.plan")  # the plan and the first estimate, shown without -v
    if verbose == 0 and not plan.handlers:
        plan.addHandler(_EchoHandler())
        plan.setLevel(logging.INFO)
        plan.propagate = False


def _register() -> None:
    from geosam.cli.info import info
    from geosam.cli.models import models
    from geosam.cli.monitor import monitor
    from geosam.cli.prompt import prompt
    from geosam.cli.segment import segment
    from geosam.cli.text import text

    cli.add_command(info)
    cli.add_command(segment)
    cli.add_command(prompt)
    cli.add_command(text)
    cli.add_command(models)
    cli.add_command(monitor)


_register()

if __name__ == "__main__":  # pragma: no cover
    cli()
