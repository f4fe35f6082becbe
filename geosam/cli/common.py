"""What every command shares: user mistakes as one-line errors, geosam's warnings as one-line
``warning: ...`` notes, interrupts as clean exits."""

from __future__ import annotations

import functools
import signal
import sys
import warnings
from collections.abc import Callable
from typing import Any

import click

from geosam.errors import GeosamError


class Terminated(Exception):
    """SIGTERM arrived (e.g. a batch scheduler ended the job)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def is_geosam_warning(category: type[Warning]) -> bool:
    """Whether warnings of ``category`` are geosam's own (e.g. `PromptWarning`)."""
    return category.__module__.split(".")[0] == "geosam"


def make_formatwarning(fallback: Callable[..., str]) -> Callable[..., str]:
    """A `warnings.formatwarning` that writes geosam's own warnings as one line, ``warning: <message>``
    (no file name, line number or source line), and leaves every other warning to ``fallback``.

    Only the text changes: where warnings go (stderr), the filters and anything recording warnings stay as they are.
    """

    def formatwarning(
        message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
    ) -> str:
        if is_geosam_warning(category):
            return f"warning: {message}\n"
        return fallback(message, category, filename, lineno, line)

    return formatwarning


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command: a `GeosamError` becomes ``Error: ...`` and exit code 1, never a traceback;
    geosam's warnings print as ``warning: ...`` (one line on stderr);
    Ctrl-C exits 130 and SIGTERM 143, with a message and no partial output (outputs are written atomically)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        formatwarning = warnings.formatwarning
        try:
            previous: Any = signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not the main thread: leave signals alone
            previous = None
        try:
            warnings.formatwarning = make_formatwarning(formatwarning)  # the command's only: restored below
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
            warnings.formatwarning = formatwarning
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


__all__ = ["Terminated", "handle_errors", "is_geosam_warning", "make_formatwarning"]
