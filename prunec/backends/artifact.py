"""Saving and loading artifacts: what each file holds, and ``prunec.load``.

Every artifact saves to a file that reloads without the model's Python code, and carries
prunec's metadata (``prunec.json``): the prunec version, the backend, the flat input/output
interface (:class:`~prunec.backends.base.IOSpec`) and the program's lineage: ``plans`` (each
step's plan as JSON, in order) and ``lineage`` (each step's pass name, config and the shapes
it changed), so a saved model says what was done to it.

| backend | file | metadata |
|---|---|---|
| ``torch`` | ``.pt2`` from ``torch.export.save`` (dynamic dims kept) | extra file ``prunec.json`` |
| ``inductor`` | ``.pt2`` AOTInductor package (compiled code) | entry ``<name>/extra/prunec.json`` |
| ``onnx`` / ``onnxruntime`` | ``.onnx`` with input/output names | ``metadata_props`` ``prunec.*`` |
| ``tensorrt`` | serialized plan | sidecar ``<path>.json`` |

:func:`load_artifact` recognises the kind from the file itself, not from its name.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunec.errors import PrunecError

if TYPE_CHECKING:
    from prunec.ir.program import Program

__all__ = ["METADATA_NAME", "metadata_for", "read_pt2_metadata", "add_zip_metadata",
           "load_artifact"]

METADATA_NAME = "prunec.json"


def metadata_for(program: "Program", backend: str, io: Any = None) -> dict:
    """The metadata saved with an artifact of ``program``."""
    from prunec import __version__

    return {"prunec_version": __version__, "backend": backend,
            "io": io.to_json() if io is not None else None,
            "plans": [step.plan.to_json() for step in program.lineage],
            "lineage": [{"name": step.name, "config": step.config,
                         "changed": {k: list(v) for k, v in step.changed.items()}}
                        for step in program.lineage]}


def add_zip_metadata(path: Path, metadata: dict) -> None:
    """Add ``<root>/extra/prunec.json`` to a PT2 archive (an AOTInductor package)."""
    with zipfile.ZipFile(path, "a") as archive:
        root = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{root}/extra/{METADATA_NAME}", json.dumps(metadata))


def read_pt2_metadata(path: Path) -> tuple[str, dict]:
    """``(kind, metadata)`` of a ``.pt2`` archive: kind ``"aoti"`` or ``"export"``."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        meta_name = next((n for n in names if n.endswith(f"/extra/{METADATA_NAME}")), None)
        metadata = json.loads(archive.read(meta_name)) if meta_name else {}
    kind = "aoti" if any("/data/aotinductor/" in n for n in names) else "export"
    return kind, metadata


def load_artifact(path: str | Path) -> Any:
    """Load any artifact prunec saved (see the module table).

    Raises:
        PrunecError: the path does not exist or holds no artifact prunec can read.
    """
    path = Path(path)
    if path.is_dir() and (path / METADATA_NAME).is_file():  # backend="module" saves a directory
        from prunec.backends.module import ModuleArtifact

        return ModuleArtifact.load(path)
    if not path.is_file():
        raise PrunecError(f"prunec.load: no file at '{path}'.")
    if zipfile.is_zipfile(path):
        return _load_pt2(path)
    with open(path, "rb") as handle:
        head = handle.read(64)
    if path.with_name(path.name + ".json").is_file():
        from prunec.backends.tensorrt_backend import TensorRTArtifact

        return TensorRTArtifact.load(path)
    if path.suffix == ".onnx" or head[:1] == b"\x08":  # ModelProto starts with ir_version
        return _load_onnx(path)
    raise PrunecError(f"prunec.load: '{path}' is not a .pt2 archive, an ONNX model or a "
                      f"TensorRT plan with its .json sidecar.")


def _load_pt2(path: Path) -> Any:
    kind, metadata = read_pt2_metadata(path)
    if kind == "aoti":
        from prunec.backends.inductor_backend import AOTInductorArtifact

        return AOTInductorArtifact.load(path)
    from prunec.backends.torch_backend import TorchArtifact

    return TorchArtifact.load(path)


def _load_onnx(path: Path) -> Any:
    from prunec.backends.onnx_backend import PIP_HINT
    from prunec.backends.base import require

    onnx = require("onnx", backend="onnx", pip=PIP_HINT)
    model = onnx.load(str(path))
    backend = next((p.value for p in model.metadata_props if p.key == "prunec.backend"),
                   "onnxruntime")
    if backend == "onnx-original":  # a user's own graph, pruned (prunec.frontends.onnx)
        from prunec.backends.onnx_original import OriginalOnnxArtifact

        return OriginalOnnxArtifact.load(path)
    if backend == "onnx":
        from prunec.backends.onnx_backend import OnnxArtifact

        return OnnxArtifact(model)
    from prunec.backends.onnxruntime_backend import OnnxRuntimeArtifact

    return OnnxRuntimeArtifact(model)
