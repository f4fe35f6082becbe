"""What every command shares: user mistakes as one-line errors, interrupts as clean exits."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from typing import Any

import click

from geosam.errors import GeosamError


class Terminated(Exception):
    """SIGTERM arrived (e.g. a batch scheduler ended the job)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command: a :class:`GeosamError` becomes ``Error: ...`` and exit code 1, never a traceback;
    Ctrl-C exits 130 and SIGTERM 143, with a message and no partial output (outputs are written atomically)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            previous: Any = signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not the main thread: leave signals alone
            previous = None
        try:
            return fn(*args, **kwargs)
        except GeosamError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted; no output was written or changed.", err=True)
            sys.exit(130)
        except Terminated:
            click.echo("Terminated; no output was written or changed.", err=True)
            sys.exit(143)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


__all__ = ["Terminated", "handle_errors"]
