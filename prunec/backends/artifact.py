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

Each backend registers how to recognise and load its own files
(:mod:`prunec.backends.registry`); ``prunec.load`` reads that table.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from prunec.backends.integrity import check_zip_entries, open_zip, parse_metadata, record_digests
from prunec.errors import PrunecError
from prunec.version import __version__

if TYPE_CHECKING:
    from prunec.ir.program import Program

__all__ = ["METADATA_NAME", "metadata_for", "metadata_json", "read_pt2_metadata",
           "add_zip_metadata", "pt2_kind"]

METADATA_NAME = "prunec.json"


def metadata_for(program: "Program", backend: str, io: Any = None) -> dict:
    """The metadata saved with an artifact of ``program``: ``plans`` (the JSON of every plan
    that changed the program, in order: ``program.plans``) and ``lineage`` (every step,
    passes that changed nothing included: name, config, ``modified`` and the shapes it
    changed). :func:`prunec.rewrite.plan.plans_from_metadata` reads the plans back, each
    with the pass that made it."""
    return {"prunec_version": __version__, "backend": backend,
            "io": io.to_json() if io is not None else None,
            "plans": [plan.to_json() for plan in program.plans],
            "lineage": [{"name": step.name, "config": step.config, "modified": step.modified,
                         "changed": {k: list(v) for k, v in step.changed.items()}}
                        for step in program.lineage]}


def add_zip_metadata(path: Path | BinaryIO, metadata: dict, *, digests: bool = False) -> None:
    """Add ``<root>/extra/prunec.json`` to a PT2 archive; with ``digests``, the metadata
    first records the SHA-256 of every other entry (checked by ``prunec.load``)."""
    meta_rel = f"extra/{METADATA_NAME}"
    if digests:
        metadata = {**metadata, "sha256": record_digests(path, exclude=meta_rel)}
    with zipfile.ZipFile(path, "a") as archive:
        root = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{root}/{meta_rel}", metadata_json(metadata))


def metadata_json(metadata: dict) -> str:
    """The metadata as a person reads it in the archive: indented, the plans as JSON
    objects (in memory they are ``PruningPlan.to_json`` strings, which would be escaped
    onto one line), so is the interface (``io``), each list of numbers (kept units, means)
    on one line. :func:`~prunec.backends.integrity.parse_metadata` turns both back into
    the strings they are in memory."""
    import re

    shown = dict(metadata)
    if isinstance(shown.get("plans"), list):
        shown["plans"] = [json.loads(p) if isinstance(p, str) else p for p in shown["plans"]]
    if isinstance(shown.get("io"), str):
        shown["io"] = json.loads(shown["io"])
    text = json.dumps(shown, indent=1)
    return re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]",
                  lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def read_pt2_metadata(path: Path) -> tuple[str, dict]:
    """``(kind, metadata)`` of a ``.pt2`` archive: kind ``"aoti"`` or ``"export"``.

    Raises:
        PrunecError: the archive is damaged, has an entry that would land outside its
            folder, or its metadata is not a JSON object.
    """
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


def pt2_kind(path: Path) -> str | None:
    """``"aoti"`` (an AOTInductor package), ``"export"`` (a ``torch.export`` archive) or
    ``None`` (not a zip archive): what a ``.pt2`` file holds, from its entry names (checked
    as :func:`read_pt2_metadata` checks them: a damaged or crafted archive is refused here).
    """
    if not path.is_file() or not zipfile.is_zipfile(path):
        return None
    return read_pt2_metadata(path)[0]
