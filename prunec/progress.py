"""Progress bars and logging: one switch for every long step of prunec.

Long steps (calibration batches, fine-tuning steps, benchmark rounds, recipe iterations)
call :func:`bar` instead of ``tqdm`` directly, and one-shot steps (capture, lowering) run
inside :func:`step`. Whether anything is drawn is decided in one place, :func:`enabled`:

1. an explicit ``progress=True/False`` given by the caller wins;
2. otherwise the process-wide setting of :func:`set_enabled` (the command line's
   ``--quiet`` sets it to False);
3. otherwise progress shows when standard error is a terminal (so logs, CI output and
   captured test output stay free of bar redraws).

Bars and step messages go to standard error; results go to standard output. Log records
of the ``prunec`` logger are routed through ``tqdm.write`` by :func:`setup_logging` so that
they do not tear a bar that is being drawn.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import time
from typing import Any, Iterable, Iterator

__all__ = ["enabled", "set_enabled", "override", "bar", "step", "setup_logging",
           "format_seconds", "say"]

_setting: dict[str, bool | None] = {"enabled": None}
_line: dict[str, bool] = {"open": False}  # a step's "message ..." waits for its time
log = logging.getLogger("prunec")


def set_enabled(flag: bool | None) -> None:
    """Turn progress output on (True), off (False) or back to automatic (None)."""
    _setting["enabled"] = flag


@contextlib.contextmanager
def override(flag: bool | None) -> Iterator[None]:
    """Within the block, progress is ``flag`` (None: leave the setting as it is); the
    previous setting comes back afterwards."""
    previous = _setting["enabled"]
    if flag is not None:
        _setting["enabled"] = flag
    try:
        yield
    finally:
        _setting["enabled"] = previous


def enabled(flag: bool | None = None) -> bool:
    """Whether to draw progress: never when ``flag`` is False; else the process-wide
    setting when there is one, else whether standard error is a terminal."""
    if flag is not None and not flag:
        return False
    if _setting["enabled"] is not None:
        return bool(_setting["enabled"])
    return _stderr_is_terminal()


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
        unit: str = "it", progress: bool | None = None, leave: bool = False, **options: Any):
    """A ``tqdm`` bar on standard error, drawn only when :func:`enabled` says so.

    Use it like ``tqdm``: iterate over it, or call ``update(n)`` and ``set_postfix(loss=...)``
    on it; close it (or use it as a context manager) when done. A disabled bar costs nothing.
    """
    from tqdm.auto import tqdm

    show = enabled(progress)
    if show:
        _end_line()
    size = shutil.get_terminal_size((0, 0))
    if size.columns > 0 and size.lines > 0:
        options.setdefault("dynamic_ncols", True)
    else:  # a terminal that reports no size (some ptys): tqdm would draw nothing
        options.setdefault("ncols", size.columns or 100)
        options.setdefault("nrows", size.lines or 24)
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr,
                disable=not show, **options)


def _end_line() -> None:
    """Finish a step's pending ``message ...`` line before something else is written."""
    if _line["open"]:
        sys.stderr.write("\n")
        sys.stderr.flush()
        _line["open"] = False


@contextlib.contextmanager
def step(message: str, *, progress: bool | None = None) -> Iterator[None]:
    """Say ``message ...`` on standard error, run the block, then say how long it took.

    For one-shot steps without a count (capture, lowering, first-use training). The
    message is also logged at INFO level, with the time at DEBUG level.
    """
    log.info("%s ...", message)
    show = enabled(progress)
    if show:
        _end_line()
        sys.stderr.write(f"{message} ...")
        sys.stderr.flush()
        _line["open"] = True
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        _finish(show, message, "failed")
        raise
    seconds = time.perf_counter() - start
    log.debug("%s: %s", message, format_seconds(seconds))
    _finish(show, message, format_seconds(seconds))


def _finish(show: bool, message: str, outcome: str) -> None:
    """`` 1.2 s`` after the step's own line, or ``message: 1.2 s`` when bars came between."""
    if not show:
        return
    sys.stderr.write(f" {outcome}\n" if _line["open"] else f"{message}: {outcome}\n")
    sys.stderr.flush()
    _line["open"] = False


def say(message: str, *, progress: bool | None = None) -> None:
    """A status line on standard error (shown when progress is), logged at INFO."""
    log.info("%s", message)
    if enabled(progress):
        from tqdm.auto import tqdm

        _end_line()
        tqdm.write(message, file=sys.stderr)


class _TqdmHandler(logging.Handler):
    """Writes records with ``tqdm.write`` so that a bar being drawn stays whole."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            _end_line()
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


def setup_logging(verbosity: int = 0) -> logging.Logger:
    """Configure the ``prunec`` logger: 0 -> warnings, 1 -> info (``-v``), 2+ -> debug.

    Idempotent: calling it again replaces the handler it installed before.
    """
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    for handler in [h for h in log.handlers if isinstance(h, _TqdmHandler)]:
        log.removeHandler(handler)
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("prunec %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return log


def format_seconds(seconds: float) -> str:
    """``0.42 s``, ``3.1 s``, ``42 s``, ``2 min 5 s``, ``1 h 3 min``: rounded for people."""
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
