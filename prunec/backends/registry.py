"""The backend table: what each backend is, in one place (DESIGN.md contracts 7 and 11).

Every backend module registers one :class:`BackendSpec` when it is imported (the package
``prunec.backends`` imports them all; none of them imports onnx, onnxruntime or tensorrt
before it is used):

* ``name``: what ``prunec.compile(..., backend=name)`` and ``--backend`` take;
* ``lowering``: ``(program, **options) -> Artifact``; its keyword options are the backend's
  options (:func:`check_backend` checks ``backend_options`` against them);
* ``requires``: the Python packages it needs (:class:`Requirement`: import name, pip name),
  from which :func:`missing` and :func:`install_hint` say what to install;
* ``sniff`` / ``load``: whether a saved path is this backend's artifact (read from the file
  itself, not its name), and how to load it; :func:`load` (``prunec.load``) tries the
  backends in ``sniff_order``.

Nothing here imports a backend module: the table is filled by the rooms it lists.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from prunec.errors import BackendUnavailable, InvalidArgumentError, PrunecError

if TYPE_CHECKING:
    from prunec.backends.base import Artifact
    from prunec.ir.program import Program

__all__ = ["Requirement", "BackendSpec", "BACKENDS", "register", "register_backend", "spec",
           "names", "missing", "install_hint", "check_available", "check_backend", "lower",
           "load", "backend_for_path"]


@dataclass(frozen=True)
class Requirement:
    """A Python package a backend needs: its import name and what ``pip install`` takes."""

    module: str
    pip: str


@dataclass(frozen=True)
class BackendSpec:
    """One backend (see the module docstring).

    Attributes:
        name: The backend's name.
        lowering: ``(program, **options) -> Artifact``, or ``"module:function"``.
        requires: Packages the lowering needs.
        sniff: ``path -> bool``: whether ``path`` holds this backend's saved artifact.
        load: ``(path, **options) -> Artifact`` for such a path.
        sniff_order: Lower sniffs first (a specific format before a general one).
        summary: One line for help texts.
        native_code: Loading runs native code from the file (a shared library, an engine):
            its loader takes ``trust`` and refuses without ``trust=True``.
        selectable: Whether ``backend=name`` chooses it. ``False`` for a kind of artifact
            that only loading names (``onnx-original``: the write-back into a user's ONNX
            file, chosen by the program's source, not by name).
    """

    name: str
    lowering: Callable[..., Any] | str
    requires: tuple[Requirement, ...] = ()
    sniff: Callable[[Path], bool] | None = None
    load: Callable[..., Any] | None = None
    sniff_order: int = 100
    summary: str = ""
    native_code: bool = False
    selectable: bool = True

    def lowering_function(self) -> Callable[..., Any]:
        """The lowering callable (a ``"module:function"`` string is imported now)."""
        if callable(self.lowering):
            return self.lowering
        module, _, function = self.lowering.partition(":")
        return getattr(importlib.import_module(module), function)


BACKENDS: dict[str, BackendSpec] = {}
"""Backend name -> :class:`BackendSpec`, in registration order."""


def register(entry: BackendSpec) -> BackendSpec:
    """Add (or replace) ``entry`` in the table; returns it."""
    BACKENDS[entry.name] = entry
    return entry


def register_backend(name: str, lowering: Callable[..., Any] | str, *,
                     requires: tuple[Requirement, ...] = ()) -> BackendSpec:
    """Register a lowering under ``name`` (a backend without saved-file loading)."""
    return register(BackendSpec(name, lowering, tuple(requires)))


def names() -> list[str]:
    """The names ``backend=`` takes, sorted."""
    return sorted(name for name, entry in BACKENDS.items() if entry.selectable)


def spec(name: Any) -> BackendSpec:
    """The entry of backend ``name``.

    Raises:
        InvalidArgumentError: an unknown name; the message lists the names and the closest.
    """
    if isinstance(name, str) and name in BACKENDS and BACKENDS[name].selectable:
        return BACKENDS[name]
    close = difflib.get_close_matches(str(name), names(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise InvalidArgumentError(f"prunec: backend must be one of {', '.join(map(repr, names()))}, "
                               f"got {name!r}.{hint}")


def missing(name: str) -> list[Requirement]:
    """The requirements of backend ``name`` that are not installed (nothing is imported)."""
    return [r for r in BACKENDS[name].requires if importlib.util.find_spec(r.module) is None]


def install_hint(name: str) -> str:
    """``pip install ...`` for every package backend ``name`` needs ("" if none)."""
    pips = list(dict.fromkeys(r.pip for r in BACKENDS[name].requires))
    return f"pip install {' '.join(pips)}" if pips else ""


def check_available(name: str, *, where: str = "prunec") -> None:
    """Raise :class:`BackendUnavailable` now, before any expensive work, when a package
    backend ``name`` needs is not installed; the message says what to install."""
    absent = missing(name)
    if absent:
        listed = ", ".join(repr(r.module) for r in absent)
        raise BackendUnavailable(f"{where}: the {name!r} backend needs the Python package(s) "
                                 f"{listed}, not installed: {install_hint(name)}")


def check_backend(backend: Any, options: Any) -> dict:
    """A registered backend name and keyword options its lowering function accepts.

    Raises:
        InvalidArgumentError: unknown name (with the closest one), options that are not a
            dict, or keys the lowering function does not take (with the accepted ones).
    """
    entry = spec(backend)
    if options is None:
        return {}
    if not isinstance(options, Mapping) or any(not isinstance(k, str) for k in options):
        raise InvalidArgumentError(f"backend_options must be a dict of keyword options for "
                                   f"the {backend!r} backend, got {type(options).__name__}.")
    options = dict(options)
    accepted = _lowering_options(entry.lowering_function())
    if accepted is not None:
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            hints = [difflib.get_close_matches(k, accepted, n=1) for k in unknown]
            hint = "".join(f" ({k!r}: did you mean {h[0]!r}?)" for k, h in zip(unknown, hints)
                           if h)
            raise InvalidArgumentError(
                f"backend_options {unknown} are not options of the {backend!r} backend; it "
                f"accepts {sorted(accepted) or 'no options'}.{hint}")
    return options


def _lowering_options(fn: Any) -> list[str] | None:
    """Keyword options of a lowering ``fn(program, **options)``; None if it takes ``**kw``."""
    try:
        params = list(inspect.signature(fn).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def lower(program: "Program", backend: str = "torch", **options: Any) -> "Artifact":
    """Lower ``program`` to ``backend`` and return the callable artifact.

    Args:
        program: The (pruned) program; it is never mutated.
        backend: A registered name (``torch``, ``onnx``, ``onnxruntime``, ``tensorrt``,
            ``inductor``...).
        **options: The backend's keyword options (see each ``lower_<backend>``).

    Raises:
        InvalidArgumentError: ``backend`` is not registered (the message lists the names),
            or an option it does not take.
        BackendUnavailable: the backend's software or hardware is missing.
    """
    options = check_backend(backend, options)
    return spec(backend).lowering_function()(program, **options)


def backend_for_path(path: Path) -> BackendSpec | None:
    """The first backend (in ``sniff_order``) whose sniffer claims ``path``, else None."""
    for entry in sorted(BACKENDS.values(), key=lambda e: e.sniff_order):
        if entry.sniff is not None and entry.load is not None and entry.sniff(path):
            return entry
    return None


def load(path: str | Path, *, trust: bool = False) -> "Artifact":
    """Load any artifact a registered backend saved (``prunec.load``), recognised from the
    file itself.

    Args:
        path: The saved file (or directory, for ``backend="module"``).
        trust: Passed to the loaders of backends whose files hold native code
            (``native_code``: AOTInductor packages, TensorRT engines), which refuse without
            it; every other kind is read as data and never runs code from the file.

    Raises:
        PrunecError: nothing at ``path``, no backend recognises it, or the loader's checks
            (damaged or crafted file, native code without ``trust``).
    """
    path = Path(path)
    entry = backend_for_path(path) if path.exists() else None
    if entry is None and not path.is_file():  # nothing there, or a folder no backend wrote
        raise PrunecError(f"prunec.load: no file at '{path}'.")
    if entry is None:
        raise PrunecError(f"prunec.load: '{path}' is not a .pt2 archive, an ONNX model or a "
                          f"TensorRT plan with its .json sidecar.")
    return entry.load(path, trust=trust) if entry.native_code else entry.load(path)
