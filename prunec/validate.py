"""Checks of plain arguments (numbers, choices, paths) and of the caller's own data, shared
by every room (DESIGN contracts 9 and 11): they import nothing of prunec but its errors.

Checks that need a room's knowledge live beside that room: the model, example inputs and
``dynamic`` in :mod:`prunec.ir.capture_checks`; calibration data and inputs against a
captured program in :mod:`prunec.ir.calibration_checks`; backends and their options in the
backend table (:mod:`prunec.backends.registry`); passes in :mod:`prunec.passes.base`;
fine-tuning options in :mod:`prunec.train.finetune`; ``compile``'s own in :mod:`prunec.api`.

Every check raises a :class:`~prunec.errors.PrunecError` subclass whose message names the
argument and says what to pass instead (:class:`~prunec.errors.InvalidArgumentError` is also
a ``TypeError`` and a ``ValueError``).
"""
from __future__ import annotations

import difflib
import errno
import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from prunec.errors import InvalidArgumentError

__all__ = ["check_ratio", "check_round_to", "check_choice", "check_positive", "is_real",
           "user_items", "is_user_error", "check_save_path"]


# ---------------------------------------------------------------------------- scalars
def is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_ratio(ratio: Any, where: str, argument: str = "ratio") -> float:
    """A pruning ratio: a finite real number in ``[0, 1)``.

    Raises:
        InvalidArgumentError: for non-numbers, booleans, NaN/inf, negatives and ``>= 1``.
    """
    if not is_real(ratio):
        raise InvalidArgumentError(
            f"{where}: {argument} must be a number in [0, 1) (the fraction of candidate "
            f"channels removed), got {type(ratio).__name__} {ratio!r}.")
    value = float(ratio)
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise InvalidArgumentError(
            f"{where}: {argument} must be in [0, 1) (the fraction of candidate channels "
            f"removed; 1 would remove every channel), got {ratio!r}.")
    return value


def check_round_to(round_to: Any, where: str) -> int:
    """A channel multiple: a positive integer (``8.0`` is accepted as 8, ``3.5`` is not).

    Raises:
        InvalidArgumentError: for None, booleans, non-integral numbers and values < 1.
    """
    integral = isinstance(round_to, numbers.Integral) or (
        isinstance(round_to, float) and round_to.is_integer())
    if isinstance(round_to, bool) or not integral:
        raise InvalidArgumentError(
            f"{where}: round_to must be a positive integer (kept channel counts are "
            f"multiples of it; round_to=1 disables rounding), got "
            f"{type(round_to).__name__} {round_to!r}.")
    if int(round_to) < 1:
        raise InvalidArgumentError(
            f"{where}: round_to must be >= 1 (round_to=1 disables rounding), got {round_to!r}.")
    return int(round_to)


def check_choice(value: Any, allowed: Sequence[str], where: str, argument: str) -> str:
    """One of ``allowed`` (strings); the message suggests the closest one.

    Raises:
        InvalidArgumentError: when ``value`` is not in ``allowed``.
    """
    if isinstance(value, str) and value in allowed:
        return value
    close = difflib.get_close_matches(str(value), list(allowed), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise InvalidArgumentError(
        f"{where}: {argument} must be one of {', '.join(map(repr, allowed))}, got "
        f"{value!r}.{hint}")


def check_positive(value: Any, where: str, argument: str, *, integer: bool = False,
                   allow_zero: bool = False) -> float | int:
    """A finite positive number (or non-negative with ``allow_zero``); an int if ``integer``.

    Raises:
        InvalidArgumentError: naming ``argument`` and the value.
    """
    kind = "integer" if integer else "number"
    bound = ">= 0" if allow_zero else "> 0"
    ok_type = isinstance(value, numbers.Integral) if integer else is_real(value)
    if isinstance(value, bool) or not ok_type:
        raise InvalidArgumentError(f"{where}: {argument} must be a {kind} {bound}, got "
                                   f"{type(value).__name__} {value!r}.")
    if not math.isfinite(float(value)) or value < 0 or (value == 0 and not allow_zero):
        raise InvalidArgumentError(f"{where}: {argument} must be a finite {kind} {bound}, "
                                   f"got {value!r}.")
    return int(value) if integer else float(value)


# ---------------------------------------------------------------------------- the caller's data
_USER_TAG = "_prunec_raised_by_caller_data"


def user_items(data: Iterable) -> Iterator:
    """Iterate the caller's data, tagging any exception that the iteration itself raises
    (their loader, their generator) so that prunec re-raises it unchanged, never wrapped:
    it is the caller's error, with the caller's traceback."""
    try:
        iterator = iter(data)
    except Exception as exc:
        _tag(exc)
        raise
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            _tag(exc)
            raise
        yield item


def _tag(exc: BaseException) -> None:
    try:
        setattr(exc, _USER_TAG, True)
    except AttributeError:  # exceptions with __slots__: left untagged (then wrapped)
        pass


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by the caller's data iterator (see :func:`user_items`)."""
    return bool(getattr(exc, _USER_TAG, False))


def check_save_path(path: Any) -> Path:
    """A path to write an artifact to: a string or ``PathLike`` whose parent directory exists.

    A missing parent raises ``FileNotFoundError`` (an ``OSError``, as every backend's file
    writer would, with the path in it) before anything is serialised; torch's zip writer
    would otherwise raise a bare ``RuntimeError`` after exporting.

    Raises:
        InvalidArgumentError: ``path`` is not a string or path.
        FileNotFoundError: the parent directory does not exist (or is a file).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"save: path must be a string or pathlib.Path, got "
                                   f"{type(path).__name__}.")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"cannot save to {str(path)!r}: the directory "
                                f"does not exist (create it first)", str(path.parent))
    return path
