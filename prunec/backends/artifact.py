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
from typing import TYPE_CHECKING, Any, BinaryIO

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


def add_zip_metadata(path: Path | BinaryIO, metadata: dict, *, digests: bool = False) -> None:
    """Add ``<root>/extra/prunec.json`` to a PT2 archive; with ``digests``, the metadata
    first records the SHA-256 of every other entry (checked by ``prunec.load``)."""
    from prunec.backends.integrity import record_digests

    meta_rel = f"extra/{METADATA_NAME}"
    if digests:
        metadata = {**metadata, "sha256": record_digests(path, exclude=meta_rel)}
    with zipfile.ZipFile(path, "a") as archive:
        root = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{root}/{meta_rel}", json.dumps(metadata))


def read_pt2_metadata(path: Path) -> tuple[str, dict]:
    """``(kind, metadata)`` of a ``.pt2`` archive: kind ``"aoti"`` or ``"export"``.

    Raises:
        PrunecError: the archive is damaged, has an entry that would land outside its
            folder, or its metadata is not a JSON object.
    """
    from prunec.backends.integrity import check_zip_entries, open_zip, parse_metadata

    with open_zip(path, path) as archive:
        names = check_zip_entries(archive, path)
        meta_name = next((n for n in names if n.endswith(f"/extra/{METADATA_NAME}")), None)
        try:
            text = archive.read(meta_name) if meta_name else None
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise PrunecError(f"prunec.load: '{path}' is damaged ({exc}).") from None
        metadata = parse_metadata(text, path, f"extra/{METADATA_NAME}")
    kind = "aoti" if any("/data/aotinductor/" in n for n in names) else "export"
    return kind, metadata


def load_artifact(path: str | Path, *, trust: bool = False) -> Any:
    """Load any artifact prunec saved (see the module table).

    Nothing in the file runs unless ``trust=True``: a ``.pt2`` export or an ONNX model is
    checked and read as data; an AOTInductor package (a shared library) or a TensorRT
    engine (native code) is native code by nature and needs ``trust=True``.

    Raises:
        PrunecError: the path holds no artifact prunec can read, a check failed (the
            message says which), or native code would run without ``trust=True``.
        OSError: the file cannot be read (naming it).
    """
    path = Path(path)
    if path.is_dir() and (path / METADATA_NAME).is_file():  # backend="module" saves a directory
        from prunec.backends.module import ModuleArtifact

        return ModuleArtifact.load(path)
    if not path.is_file():
        raise PrunecError(f"prunec.load: no file at '{path}'.")
    if zipfile.is_zipfile(path):
        return _load_pt2(path, trust)
    with open(path, "rb") as handle:
        head = handle.read(64)
    if path.suffix != ".onnx" and _tensorrt_sidecar(path):
        from prunec.backends.tensorrt_backend import TensorRTArtifact

        return TensorRTArtifact.load(path, trust=trust)
    if path.suffix == ".onnx" or head[:1] == b"\x08":  # ModelProto starts with ir_version
        return _load_onnx(path)
    raise PrunecError(f"prunec.load: '{path}' is not a .pt2 archive, an ONNX model or a "
                      f"TensorRT plan with its .json sidecar.")


def _tensorrt_sidecar(path: Path) -> bool:
    """Whether ``path + '.json'`` is a TensorRT sidecar prunec wrote (any other JSON file
    beside a model is someone else's)."""
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.is_file():
        return False
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("backend") == "tensorrt"


def _load_pt2(path: Path, trust: bool) -> Any:
    kind, _ = read_pt2_metadata(path)
    if kind == "aoti":
        from prunec.backends.inductor_backend import AOTInductorArtifact

        return AOTInductorArtifact.load(path, trust=trust)
    from prunec.backends.torch_backend import TorchArtifact

    return TorchArtifact.load(path)


def _load_onnx(path: Path) -> Any:
    from prunec.backends.integrity import load_onnx_file, onnx_io

    model = load_onnx_file(path)
    io = onnx_io(model, path)
    backend = next((p.value for p in model.metadata_props if p.key == "prunec.backend"),
                   "onnxruntime")
    if backend == "onnx-original":  # a user's own graph, pruned (prunec.frontends.onnx)
        from prunec.backends.onnx_original import OriginalOnnxArtifact

        return OriginalOnnxArtifact.load(path)
    if backend == "onnx":
        from prunec.backends.onnx_backend import OnnxArtifact

        return OnnxArtifact(model, io)
    from prunec.backends.onnxruntime_backend import OnnxRuntimeArtifact

    return OnnxRuntimeArtifact(model, io)
