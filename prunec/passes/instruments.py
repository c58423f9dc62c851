"""Instruments: checks and dumps that run around passes (DESIGN.md contract 8).

An instrument has optional ``before(pass_, program)`` and ``after(pass_, program, result)``
hooks; :class:`~prunec.passes.base.PassContext` calls them. Pass code never verifies itself.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.utils._pytree as pytree

from prunec.errors import PrunecError

__all__ = ["CheckOutputs", "DumpIR"]


def _signature(out) -> list:
    leaves, spec = pytree.tree_flatten(out)
    return [str(spec)] + [(tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else type(t).__name__
                          for t in leaves]


class CheckOutputs:
    """After every modifying pass, run the program on its example inputs and check that the
    output structure, shapes and dtypes are unchanged and every value is finite."""

    def __init__(self):
        self._reference = None

    def _run(self, program):
        with torch.no_grad():
            return program.run(*program.example_args, **program.example_kwargs)

    def before(self, pass_, program) -> None:
        if self._reference is None and not program.training:
            self._reference = _signature(self._run(program))

    def after(self, pass_, program, result) -> None:
        if not result.modified or program.training or self._reference is None:
            return
        out = self._run(program)
        if _signature(out) != self._reference:
            raise PrunecError(f"after {type(pass_).__name__} the program's outputs changed structure or "
                              f"shape: {_signature(out)} != {self._reference}. Please report this.")
        bad = [i for i, t in enumerate(pytree.tree_leaves(out))
               if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise PrunecError(f"after {type(pass_).__name__} output(s) {bad} hold NaN or inf.")


class DumpIR:
    """Write the graph's code after every pass to ``directory/NN_<pass>.py``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._count = 0

    def after(self, pass_, program, result) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._count += 1
        path = self.directory / f"{self._count:02d}_{type(pass_).__name__}.py"
        path.write_text(program.gm.code)
