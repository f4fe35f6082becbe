"""What every command shares: user mistakes as one-line errors, geosam's warnings as one-line
``warning: ...`` notes, interrupts as clean exits."""

from __future__ import annotations

import functools
import logging
import signal
import sys
import warnings
from collections.abc import Callable
from typing import Any

import click

from geosam.errors import GeosamError

log = logging.getLogger(__name__)


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


def make_showwarning(fallback: Callable[..., None]) -> Callable[..., None]:
    """A `warnings.showwarning` that shows geosam's own warnings (through ``fallback``) and, unless ``-v``
    (the root logger at INFO or below), sends other libraries' warnings (pyogrio, rasterio, numpy, Dask...) to
    the debug log: they are about geosam's internals, not the user's data, and would drown its one-line messages.
    """

    def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    file: Any = None, line: str | None = None) -> None:
        if is_geosam_warning(category) or logging.getLogger().isEnabledFor(logging.INFO):
            fallback(message, category, filename, lineno, file, line)
        else:
            log.debug("%s from %s:%d: %s", category.__name__, filename, lineno, message)

    return showwarning


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command: a `GeosamError` becomes ``Error: ...`` and exit code 1, never a traceback;
    geosam's warnings print as ``warning: ...`` (one line on stderr);
    Ctrl-C exits 130 and SIGTERM 143, with a message and no partial output (outputs are written atomically)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        formatwarning, showwarning = warnings.formatwarning, warnings.showwarning
        try:
            previous: Any = signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not the main thread: leave signals alone
            previous = None
        try:
            warnings.formatwarning = make_formatwarning(formatwarning)  # the command's only: restored below
            warnings.showwarning = make_showwarning(showwarning)
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
            warnings.formatwarning, warnings.showwarning = formatwarning, showwarning
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def lock_outputs(*paths: str | None) -> None:
    """Hold the lock of every output path (None skipped) until the command ends: a second geosam run on
    one of them is refused at once (see `geosam.write.lock.output_lock`)."""
    from geosam.write.lock import output_lock

    ctx = click.get_current_context()
    for path in paths:
        ctx.with_resource(output_lock(path))


__all__ = ["Terminated", "handle_errors", "is_geosam_warning", "lock_outputs", "make_formatwarning", "make_showwarning"]
