"""The ``inductor`` backend: TorchInductor, just in time or ahead of time.

- Just in time (default): ``torch.compile(gm, backend="inductor", mode=mode)`` on a private
  copy of the program's graph module. Compilation is lazy: it happens on the first call
  (and again when a new input shape needs a recompile). ``save`` compiles the module ahead
  of time into an AOTInductor package (below) and writes that.
- Ahead of time (``aot=True``): the module is re-exported (dynamic axes kept) and compiled
  into an AOTInductor package with ``torch._inductor.aoti_compile_and_package``; ``save``
  copies that ``.pt2`` package (with prunec's metadata inside) and ``load`` runs it with
  ``torch._inductor.aoti_load_package``, no Python model code needed. A package runs on the
  torch version and device kind it was built for.

On CPU Inductor generates C++ and needs a C++ compiler; on CUDA it needs triton. Either one
missing gives :class:`~prunec.errors.BackendUnavailable`. Parity (``check=True``) uses
:data:`INDUCTOR_TOLERANCES` (fused kernels reorder float reductions).
"""
from __future__ import annotations

import copy
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.utils._pytree as pytree

from prunec.backends.base import Artifact, IOSpec, require, verify_artifact
from prunec.backends.artifact import (
    METADATA_NAME, add_zip_metadata, metadata_for, pt2_kind, read_pt2_metadata,
)
from prunec.backends.integrity import read_io, verify_archive
from prunec.backends.registry import BackendSpec, register
from prunec.backends.torch_backend import reexport
from prunec.errors import BackendUnavailable, PrunecError
from prunec.fileio import atomic_path

if TYPE_CHECKING:
    from prunec.ir.program import Program

__all__ = ["InductorArtifact", "AOTInductorArtifact", "lower_inductor", "INDUCTOR_TOLERANCES"]

INDUCTOR_TOLERANCES: tuple[float, float] = (1e-4, 1e-4)
"""Parity tolerance ``(atol, rtol)`` (fp32)."""


class InductorArtifact(Artifact):
    """A graph module compiled lazily by ``torch.compile(backend="inductor")``.

    Args:
        module: The module to compile.
        example_args: Positional example inputs (for :meth:`save`'s re-export).
        example_kwargs: Keyword example inputs.
        mode: ``torch.compile`` mode (``None``, ``"reduce-overhead"``, ``"max-autotune"``...).
        dynamic: ``torch.compile``'s ``dynamic`` (``None``: dynamic after a recompile).
    """

    name = "inductor"

    def __init__(self, module: torch.nn.Module, example_args: tuple = (),
                 example_kwargs: dict | None = None, *, mode: str | None = None,
                 dynamic: bool | None = None, io: IOSpec | None = None,
                 metadata: dict | None = None) -> None:
        self.module = module
        self.io = io
        self.metadata = dict(metadata or {})
        self.example_args = tuple(example_args)
        self.example_kwargs = dict(example_kwargs or {})
        self.settings = {"mode": mode, "dynamic": dynamic}
        self._compiled: Any = None

    @property
    def compiled(self) -> bool:
        """Whether ``torch.compile`` has been set up (it compiles on the first call)."""
        return self._compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.io is not None:
            kwargs = self.io.complete_kwargs(kwargs)  # constant keywords may be left out
            self.io.flatten_inputs(args, kwargs)  # checks dtype, rank and fixed sizes
        if self._compiled is None:
            _require_toolchain(args, kwargs)
            self._compiled = torch.compile(self.module, backend="inductor", **self.settings)
        with torch.no_grad():
            return self._compiled(*args, **kwargs)

    def save(self, path: str | Path) -> Path:
        """Compile an AOTInductor package (tens of seconds on CPU) and write it."""
        package = _build_package(self.module, self.example_args, self.example_kwargs,
                                 self.io, self.metadata)
        return package.save(path)

    @classmethod
    def load(cls, path: str | Path, *, trust: bool = False) -> "AOTInductorArtifact":
        """Load a package written by :meth:`save` (native code: needs ``trust=True``)."""
        return AOTInductorArtifact.load(path, trust=trust)


class AOTInductorArtifact(Artifact):
    """An AOTInductor ``.pt2`` package loaded with ``torch._inductor.aoti_load_package``.

    Args:
        package_path: The package file.
        owned_dir: A temporary folder holding the package, removed with the artifact.
    """

    name = "inductor"

    def __init__(self, package_path: str | Path, owned_dir: Path | None = None) -> None:
        import torch._inductor

        self.package_path = Path(package_path)

        self.metadata = read_pt2_metadata(self.package_path)[1]
        self.io = read_io(self.metadata.get("io"), self.package_path)
        self.runner = torch._inductor.aoti_load_package(str(self.package_path))
        if owned_dir is not None:
            weakref.finalize(self, shutil.rmtree, owned_dir, ignore_errors=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.io is not None:
            kwargs = self.io.complete_kwargs(kwargs)  # constant keywords may be left out
            self.io.flatten_inputs(args, kwargs)  # checks dtype, rank and fixed sizes
        with torch.no_grad():
            return self.runner(*args, **kwargs)

    def save(self, path: str | Path) -> Path:
        """Copy the ``.pt2`` package to ``path`` atomically."""

        path = Path(path)
        if path.resolve() != self.package_path.resolve():
            with atomic_path(path) as temp:
                shutil.copyfile(self.package_path, temp)
        return path

    @classmethod
    def load(cls, path: str | Path, *, trust: bool = False) -> "AOTInductorArtifact":
        """Load a package written by :meth:`save` (same torch version and device kind).

        An AOTInductor package is a compiled shared library that loading runs
        (``dlopen``): it needs ``trust=True``. Even then an entry that would be extracted
        outside the package's folder is refused.

        Raises:
            PrunecError: ``trust`` is not set, or the archive is damaged or crafted.
        """
        path = Path(path)
        if not trust:
            raise PrunecError(
                f"prunec.load: '{path}' is an AOTInductor package: loading it runs the "
                f"compiled native code inside (a shared library), which could do anything. "
                f"If you trust whoever made the file, call prunec.load(path, trust=True).")

        verify_archive(path, METADATA_NAME)  # names, CRCs, checksums before extraction
        return cls(path)


def _require_toolchain(args: tuple, kwargs: dict) -> None:
    """Inductor needs triton for CUDA inputs and a C++ compiler for CPU ones."""
    leaves = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    if any(t.is_cuda for t in leaves):
        require("triton", backend="inductor", pip="triton")
    elif not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        raise BackendUnavailable(
            "The 'inductor' backend on CPU compiles C++ and found no compiler (g++, c++ or "
            "clang++ on PATH). Install one, e.g. apt-get install g++.")


def lower_inductor(program: "Program", *, mode: str | None = None, dynamic: bool | None = None,
                   aot: bool = False, check: bool = False, atol: float | None = None,
                   rtol: float | None = None) -> InductorArtifact | AOTInductorArtifact:
    """Lower ``program`` with TorchInductor.

    Args:
        program: The program (not mutated).
        mode: ``torch.compile`` mode (just in time only).
        dynamic: ``torch.compile``'s ``dynamic`` (just in time only).
        aot: Build an AOTInductor package now instead of compiling lazily.
        check: Run the parity check now (for the lazy artifact, this compiles it).
        atol: Absolute tolerance (:data:`INDUCTOR_TOLERANCES` when ``None``).
        rtol: Tolerance relative to ``max|ref|``.

    Raises:
        BackendUnavailable: no C++ compiler (CPU) or no triton (CUDA).
        PrunecError: the parity check failed.
    """
    _require_toolchain(program.example_args, program.example_kwargs)
    gm = copy.deepcopy(program.gm)
    io = IOSpec.from_program(program)
    metadata = metadata_for(program, "inductor", io)
    if aot:
        artifact: Any = _build_package(gm, program.example_args, program.example_kwargs, io,
                                       metadata)
    else:
        artifact = InductorArtifact(gm, program.example_args, program.example_kwargs,
                                    mode=mode, dynamic=dynamic, io=io, metadata=metadata)
    if check:
        verify_artifact(program, artifact, io, backend="inductor",
                        atol=INDUCTOR_TOLERANCES[0] if atol is None else atol,
                        rtol=INDUCTOR_TOLERANCES[1] if rtol is None else rtol)
    return artifact


def _build_package(gm: torch.nn.Module, args: tuple, kwargs: dict, io: IOSpec | None,
                   metadata: dict) -> AOTInductorArtifact:
    import torch._inductor

    exported = reexport(gm, args, kwargs, io)
    directory = Path(tempfile.mkdtemp(prefix="prunec-aoti-"))
    with torch.no_grad():
        path = torch._inductor.aoti_compile_and_package(
            exported, package_path=str(directory / "model.pt2"))
    add_zip_metadata(Path(path), {**metadata, "backend": "inductor"}, digests=True)
    return AOTInductorArtifact(path, owned_dir=directory)


register(BackendSpec(
    "inductor", lower_inductor, sniff=lambda path: pt2_kind(path) == "aoti",
    load=AOTInductorArtifact.load, sniff_order=10, native_code=True,
    summary="torch.compile (Inductor); saves an AOTInductor .pt2 package"))
