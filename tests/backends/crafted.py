"""Saved artifacts of a tiny MLP and tools to craft bad ones from them (a damaged or a
malicious file), shared by the load-safety and load-fuzz tests."""
from __future__ import annotations

import functools
import json
import zipfile
from pathlib import Path
from typing import Callable

import torch

from prunec.backends import lower
from tests.backends.models import inputs, program

__all__ = ["saved_bytes", "reference", "mlp_input", "rewrite_zip", "SUFFIX"]

SUFFIX = {"torch": ".pt2", "onnx": ".onnx", "onnxruntime": ".onnx"}


@functools.lru_cache(maxsize=None)
def _artifact(backend: str):
    return lower(program("mlp"), backend)


@functools.lru_cache(maxsize=None)
def saved_bytes(backend: str, folder: str) -> bytes:
    """The bytes of the tiny MLP saved by ``backend`` (saved once per session)."""
    path = Path(folder) / f"reference-{backend}{SUFFIX[backend]}"
    _artifact(backend).save(path)
    return path.read_bytes()


def reference(x: torch.Tensor) -> torch.Tensor:
    """What a correctly loaded MLP returns for ``x``."""
    with torch.no_grad():
        return program("mlp").gm(x)


def mlp_input(batch: int = 3) -> torch.Tensor:
    return inputs("mlp", batch)[0][0]



def rewrite_zip(source: Path, target: Path,
                edit: Callable[[str, bytes], bytes | None] = lambda n, d: d,
                extra: dict[str, bytes] | None = None, keep_checksums: bool = False) -> Path:
    """Copy a ``.pt2`` archive entry by entry through ``edit(name_under_root, data)``
    (``None`` drops the entry) and add ``extra`` entries (names taken as they are).

    Unless ``keep_checksums``, the SHA-256 list in ``prunec.json`` is dropped, as an
    attacker crafting a file would do: the checks under test must hold on their own.
    """
    with zipfile.ZipFile(source) as archive:
        entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
    root = entries[0][0].split("/", 1)[0]
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        for name, data in entries:
            relative = name[len(root) + 1:]
            if relative == "extra/prunec.json" and not keep_checksums:
                meta = json.loads(data)
                meta.pop("sha256", None)
                data = json.dumps(meta).encode()
            new = edit(relative, data)
            if new is not None:
                out.writestr(name, new)
        for name, data in (extra or {}).items():
            out.writestr(name, data)
    return target
