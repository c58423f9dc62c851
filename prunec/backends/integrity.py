"""What prunec checks in a saved file before torch, onnx or ONNX Runtime reads it.

Loading never runs code from a file (DESIGN contract 13). The libraries prunec loads with
would, given a crafted file:

- ``torch.export.load`` unpickles weights and constants stored with ``use_pickle``, custom
  and opaque objects, legacy ``.pt`` weight files, and sample inputs that
  ``weights_only=True`` refuses (it retries with ``weights_only=False``); it evaluates
  every symbolic shape expression with ``sympy.sympify`` (which is ``eval``); and it
  imports any module named by an ``Enum`` or ``defaultdict`` in a tree spec.
- ``zipfile``-based extractors (the AOTInductor loader) write an entry named ``../x`` or
  ``/x`` outside their folder.

So before a ``.pt2`` reaches torch, :func:`check_export_archive` reads it with Python's
``zipfile`` and refuses, with a :class:`~prunec.errors.PrunecError` naming the entry:

- an entry whose name is absolute, has a ``..`` part, a backslash or a drive letter, is a
  symbolic link, or repeats (:func:`check_zip_entries`);
- a pickled entry: ``use_pickle`` weights or constants, custom or opaque objects, legacy
  ``.pt`` weights, sample inputs that do not load with ``weights_only=True``, or an archive
  without the ``archive_format`` record (torch's legacy reader unpickles);
- a shape expression with anything but symbols (``s0``, ``u3``), integers, arithmetic and
  the sympy and ``torch.utils._sympy`` functions torch prints (:func:`check_sym_expr`);
- a tree spec with an ``Enum`` or a ``defaultdict`` (:func:`check_treespec`).

Integrity (never a wrong answer from a damaged file): reading every entry with ``zipfile``
verifies its CRC-32, and since this version prunec records the SHA-256 of every entry in
``prunec.json`` (:func:`record_digests`), compared at load. An ONNX file records the
SHA-256 of its own canonical serialization in ``prunec.sha256`` (:func:`onnx_digest`); a
TensorRT sidecar the SHA-256 of its plan. Checksums catch corruption and edits made
without prunec; they are not signatures: whoever can write the file can write its
checksum, which is why the checks above never depend on them.
"""
from __future__ import annotations

import hashlib
import io
import json
import keyword
import re
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Iterable

from prunec.backends.base import ONNX_PIP_HINT, IOSpec, require
from prunec.errors import PrunecError

__all__ = [
    "check_zip_entries", "check_export_archive", "check_sym_expr", "check_treespec",
    "record_digests", "check_digests", "onnx_digest", "ONNX_DIGEST_KEY", "sha256_hex",
    "parse_metadata", "read_io", "verify_archive", "stamp_onnx_digest", "open_zip", "load_onnx_file",
]

ONNX_DIGEST_KEY = "prunec.sha256"
_SYMPY_NAMES = frozenset({
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Max", "Min", "floor",
    "ceiling", "Abs", "sqrt", "oo", "zoo", "nan", "true", "false", "True", "False",
    "Integer", "Rational", "Float", "Piecewise", "ITE", "Mod", "Mul", "Add", "Pow",
    "Symbol", "Dummy", "precision",
    # assumption keywords of srepr's Symbol('s0', positive=True, integer=True)
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite",
    "zero", "nonzero", "even", "odd", "rational", "commutative", "extended_real",
})
_QUOTED = re.compile(r"'([^']*)'")
_LITERAL = re.compile(r"[a-z]{1,4}\d+|-?\d+(\.\d+)?(e[+-]?\d+)?")
_SYMBOL = re.compile(r"[a-z]{1,4}\d+")
_EXPR_CHARS = re.compile(r"[A-Za-z0-9_ +\-*/%()<>=!,.&|~]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_MAX_EXPR = 2000


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- zip entries
def check_zip_entries(archive: zipfile.ZipFile, path: Path) -> list[str]:
    """The entry names of ``archive``, refusing any that would land outside its folder.

    Raises:
        PrunecError: an absolute name, a ``..`` part, a backslash, a drive letter, a NUL,
            a symbolic link or a repeated name; the message names the entry and ``path``.
    """
    seen: set[str] = set()
    for info in archive.infolist():
        name = info.filename
        parts = PurePosixPath(name).parts
        bad = (not name or name.startswith("/") or "\\" in name or "\x00" in name
               or ".." in parts or re.match(r"^[A-Za-z]:", name) is not None)
        if bad:
            raise PrunecError(f"prunec.load: '{path}' has an archive entry {name!r} that "
                              f"would land outside its folder; refusing to read it.")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise PrunecError(f"prunec.load: '{path}' has an archive entry {name!r} that is "
                              f"a symbolic link; refusing to read it.")
        if name in seen:
            raise PrunecError(f"prunec.load: '{path}' has the archive entry {name!r} twice "
                              f"(a damaged or crafted file); refusing to read it.")
        seen.add(name)
    return list(seen)


def _read_all(archive: zipfile.ZipFile, path: Path) -> dict[str, str]:
    """SHA-256 of every entry, reading each fully (which verifies its CRC-32)."""
    digests = {}
    for info in archive.infolist():
        if info.is_dir():
            continue
        hasher = hashlib.sha256()
        try:
            with archive.open(info) as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    hasher.update(block)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError,
                RuntimeError, zlib.error) as exc:
            raise PrunecError(f"prunec.load: '{path}' is damaged: its entry "
                              f"{info.filename!r} cannot be read ({exc}).") from None
        digests[info.filename] = hasher.hexdigest()
    return digests


def open_zip(source: Path | BinaryIO, path: Path) -> zipfile.ZipFile:
    """``zipfile.ZipFile(source)`` with a damaged archive reported as a PrunecError."""
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise PrunecError(f"prunec.load: '{path}' is not a readable .pt2 archive "
                          f"({exc}).") from None


def _root(names: Iterable[str], path: Path) -> str:
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise PrunecError(f"prunec.load: '{path}' is not a .pt2 archive written by "
                          f"torch.export.save (its entries are not under one folder).")
    return roots.pop()


# --------------------------------------------------------------------------- metadata
def parse_metadata(text: str | bytes | None, path: Path, where: str) -> dict:
    """prunec's metadata (a JSON object), or a PrunecError saying it is damaged."""
    if text is None or text == "" or text == b"":
        return {}
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PrunecError(f"prunec.load: the prunec metadata ({where}) of '{path}' is not "
                          f"valid JSON ({exc}); the file is damaged or was edited.") from None
    if not isinstance(data, dict):
        raise PrunecError(f"prunec.load: the prunec metadata ({where}) of '{path}' is not a "
                          f"JSON object; the file is damaged or was edited.")
    if isinstance(data.get("plans"), list):  # written as objects to be readable (metadata_json)
        data["plans"] = [p if isinstance(p, str) else json.dumps(p) for p in data["plans"]]
    if isinstance(data.get("io"), dict):
        data["io"] = json.dumps(data["io"])
    return data


def record_digests(archive_path: Path | BinaryIO, exclude: str) -> dict[str, str]:
    """SHA-256 of every entry of a freshly written archive, by name relative to its root
    folder (the root is the file's stem, which changes with the name it is saved under)."""
    shown = Path(getattr(archive_path, "name", "<archive in memory>")) \
        if not isinstance(archive_path, Path) else archive_path
    with zipfile.ZipFile(archive_path) as archive:
        names = archive.namelist()
        root = _root(names, shown)
        digests = _read_all(archive, shown)
    return {name[len(root) + 1:]: digest for name, digest in digests.items()
            if name[len(root) + 1:] != exclude}


def check_digests(recorded: Any, actual: dict[str, str], root: str, exclude: str,
                  path: Path) -> None:
    """Every entry's SHA-256 equals the one recorded at save; none added or missing."""
    if not isinstance(recorded, dict):
        raise PrunecError(f"prunec.load: the checksums recorded in '{path}' are damaged.")
    relative = {n[len(root) + 1:]: d for n, d in actual.items()
                if n[len(root) + 1:] != exclude}
    for name in sorted(set(recorded) | set(relative)):
        if recorded.get(name) != relative.get(name):
            what = ("is missing" if name not in relative else
                    "was not there when it was saved" if name not in recorded else
                    "does not match the checksum recorded when it was saved")
            raise PrunecError(f"prunec.load: '{path}' was changed or damaged since prunec "
                              f"saved it: entry {name!r} {what}.")


def verify_archive(path: Path, metadata_name: str) -> None:
    """Read every entry of an archive (CRC-32) and compare the SHA-256 recorded in its
    metadata, when there is one."""
    with open_zip(path, path) as archive:
        names = check_zip_entries(archive, path)
        root = _root(names, path)
        digests = _read_all(archive, path)
        meta_rel = f"extra/{metadata_name}"
        text = archive.read(f"{root}/{meta_rel}") if f"{root}/{meta_rel}" in names else None
    metadata = parse_metadata(text, path, meta_rel)
    if "sha256" in metadata:
        check_digests(metadata["sha256"], digests, root, meta_rel, path)


# --------------------------------------------------------------------------- .pt2 (export)
def check_export_archive(source: BinaryIO, path: Path, metadata_name: str) -> dict:
    """Check a ``torch.export`` ``.pt2`` (see the module docstring) and return prunec's
    metadata (``{}`` when there is none).

    Raises:
        PrunecError: naming the entry and why, for anything that would run code, land
            outside its folder, or does not match its checksums.
    """
    archive = open_zip(source, path)
    with archive:
        names = check_zip_entries(archive, path)
        root = _root(names, path)
        digests = _read_all(archive, path)

        def read(relative: str) -> bytes:
            return archive.read(f"{root}/{relative}")

        rel = {n[len(root) + 1:] for n in names}
        if "archive_format" not in rel or read("archive_format").decode("utf-8", "replace") != "pt2":
            raise PrunecError(f"prunec.load: '{path}' is a .pt2 in torch's legacy format, "
                              f"whose weights are pickled (loading them could run code); "
                              f"re-save it with this torch version.")
        meta_rel = f"extra/{metadata_name}"
        metadata = parse_metadata(read(meta_rel) if meta_rel in rel else None, path,
                                  meta_rel)
        if "sha256" in metadata:
            check_digests(metadata["sha256"], digests, root, meta_rel, path)
        models = [n[len("models/"):-len(".json")] for n in rel
                  if n.startswith("models/") and n.endswith(".json")]
        if not models:
            raise PrunecError(f"prunec.load: '{path}' holds no exported program.")
        for model in models:
            _check_model(model, rel, read, path)
    return metadata


def _check_model(model: str, rel: set[str], read: Any, path: Path) -> None:
    for legacy in (f"data/weights/{model}.pt", f"data/constants/{model}.pt"):
        if legacy in rel:
            raise _pickled(path, legacy)
    for kind in ("weights", "constants"):
        config_name = f"data/{kind}/{model}_{kind}_config.json"
        if config_name in rel:
            config = _json(read(config_name), path, config_name)
            entries = config.get("config", {}) if isinstance(config, dict) else None
            if not isinstance(entries, dict):
                raise PrunecError(f"prunec.load: '{path}': {config_name} is damaged.")
            for fqn, meta in entries.items():
                name = meta.get("path_name", "") if isinstance(meta, dict) else ""
                if not isinstance(meta, dict) or meta.get("use_pickle") is not False or (
                        kind == "constants" and not str(name).startswith("tensor_")):
                    raise _pickled(path, f"data/{kind}/{name} ({fqn})")
    inputs = f"data/sample_inputs/{model}.pt"
    if inputs in rel:
        import torch

        try:
            torch.load(io.BytesIO(read(inputs)), weights_only=True)
        except Exception:  # noqa: BLE001 - any failure means "not plain tensors"
            raise _pickled(path, inputs) from None
    program = _json(read(f"models/{model}.json"), path, f"models/{model}.json")
    _check_program_json(program, path)


def _pickled(path: Path, entry: str) -> PrunecError:
    return PrunecError(
        f"prunec.load: '{path}' stores {entry} as a pickle, and unpickling can run any code "
        f"hidden in the file; prunec refuses it. Files prunec saves store plain tensors: "
        f"re-save the model with prunec (compiled.save).")


def _json(data: bytes, path: Path, entry: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PrunecError(f"prunec.load: '{path}': entry {entry} is not valid JSON "
                          f"({exc}).") from None


def _check_program_json(node: Any, path: Path) -> None:
    """Walk the serialized program: shape expressions, tree specs, and every name that
    torch.fx writes into the Python source of the rebuilt module (node and argument
    names, ``forward_arg_names``, keyword-input names) must be plain identifiers: a name
    such as ``x=__import__('os')...`` would become a default argument, run on load."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "expr_str":
                    check_sym_expr(value, path)
                elif key in ("in_spec", "out_spec") and isinstance(value, str):
                    check_treespec(value, path, names=key == "in_spec")
                elif key == "name" and isinstance(value, str):
                    _check_name(value, path)
                elif key == "forward_arg_names" and isinstance(value, list):
                    for name in value:
                        _check_name(name, path)
                else:
                    if key.endswith("_values") and isinstance(value, dict):
                        for name in value:
                            _check_name(name, path)
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _check_name(name: Any, path: Path) -> None:
    if not (isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)):
        raise PrunecError(f"prunec.load: '{path}' names a graph value {str(name)[:80]!r}, "
                          f"which is not a Python identifier; torch would write it into "
                          f"generated code, so prunec refuses the file.")


def _allowed_names() -> frozenset[str]:
    import inspect

    import sympy
    import torch.utils._sympy.functions as functions

    torch_names = {n for n, v in vars(functions).items()
                   if inspect.isclass(v) and issubclass(v, sympy.Basic)
                   and not n.startswith("_") and n not in ("Application", "Expr", "Basic")}
    return frozenset(torch_names | _SYMPY_NAMES)


_ALLOWED: frozenset[str] | None = None


def check_sym_expr(expr: Any, path: Path) -> None:
    """Refuse a symbolic shape expression that is not plain arithmetic on symbols.

    torch evaluates these with ``sympy.sympify``, i.e. ``eval``. Allowed: symbols
    (``s0``, ``u12``), integers and decimals, ``+ - * / % ( ) , < > = ! & | ~``, the
    function names sympy and ``torch.utils._sympy.functions`` print (``Max``,
    ``FloorDiv``...), ``srepr``'s ``Symbol('s0', positive=True, integer=True)`` form (a
    quoted string may only be a symbol name or a number) and its assumption keywords. No
    other string, bracket, attribute or name can get through, so nothing but those
    functions can be reached. ``**`` is allowed only with a small
    integer exponent (a huge power would hang the loader).
    """
    global _ALLOWED
    if _ALLOWED is None:
        _ALLOWED = _allowed_names()
    bad = not isinstance(expr, str) or len(expr) > _MAX_EXPR
    if not bad:  # srepr quotes symbol names and decimals: Symbol('s0', ...), Float('0.5')
        bad = any(not _LITERAL.fullmatch(m) for m in _QUOTED.findall(expr))
        expr_unquoted = _QUOTED.sub("0", expr)
        bad = bad or not _EXPR_CHARS.fullmatch(expr_unquoted)
    if not bad:
        expr = expr_unquoted
        for name in _IDENTIFIER.findall(expr):
            if not (_SYMBOL.fullmatch(name) or name in _ALLOWED):
                bad = True
                break
        if re.search(r"\d{13,}", expr) or re.search(r"\*\*\s*(?!\d{1,2}(?!\d))", expr):
            bad = True
    if bad:
        shown = repr(expr)[:120]
        raise PrunecError(f"prunec.load: '{path}' has a shape expression {shown} that is not "
                          f"plain arithmetic; torch would evaluate it as Python code, so "
                          f"prunec refuses the file.")


def check_treespec(text: str, path: Path, *, names: bool = False) -> None:
    """Refuse a serialized pytree spec that would import a module when read: an ``Enum``
    in a context (``{"__enum__": ...}``) or a ``defaultdict`` (its factory's module).

    With ``names`` (a program's input spec), the keyword inputs' names must be
    identifiers: torch.fx writes them into the rebuilt module's ``def forward(...)``.
    """
    try:
        spec = json.loads(text)
    except ValueError:
        raise PrunecError(f"prunec.load: '{path}' has a damaged input/output tree spec."
                          ) from None
    stack = [spec]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            kind = item.get("type")
            context = item.get("context")
            if kind == "collections.defaultdict" or (
                    isinstance(context, str) and "__enum__" in context):
                raise PrunecError(
                    f"prunec.load: '{path}' has an input/output structure "
                    f"({kind or 'an Enum'}) whose reading imports a module named in the "
                    f"file; prunec refuses it.")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    if names:
        for name in _kwarg_names(spec, path):
            _check_name(name, path)


def _kwarg_names(spec: Any, path: Path) -> list:
    """The keyword names of an ``(args, kwargs)`` input spec (``[]`` for other shapes)."""
    root = spec[1] if isinstance(spec, list) and len(spec) == 2 else None
    children = root.get("children_spec") if isinstance(root, dict) else None
    if not (isinstance(children, list) and len(children) == 2
            and isinstance(children[1], dict) and children[1].get("type") == "builtins.dict"):
        return []
    try:
        keys = json.loads(children[1].get("context") or "[]")
    except (TypeError, ValueError):
        raise PrunecError(f"prunec.load: '{path}' has a damaged input tree spec.") from None
    return keys if isinstance(keys, list) else [keys]


# --------------------------------------------------------------------------- ONNX
def onnx_digest(model: Any) -> str:
    """SHA-256 of the model's canonical serialization without its ``prunec.sha256``
    entry; the entry, if present, is left in place (first)."""
    props = [(p.key, p.value) for p in model.metadata_props]
    kept = [(k, v) for k, v in props if k != ONNX_DIGEST_KEY]
    _set_props(model, kept)
    try:
        return sha256_hex(model.SerializeToString(deterministic=True))
    finally:
        _set_props(model, props)


def _set_props(model: Any, props: list[tuple[str, str]]) -> None:
    del model.metadata_props[:]
    for key, value in props:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def stamp_onnx_digest(model: Any) -> None:
    """Put ``prunec.sha256`` first in the model's metadata (a truncation that keeps any
    of prunec's metadata keeps the checksum, so it cannot pass unnoticed)."""
    digest = onnx_digest(model)
    rest = [(p.key, p.value) for p in model.metadata_props if p.key != ONNX_DIGEST_KEY]
    _set_props(model, [(ONNX_DIGEST_KEY, digest), *rest])

def load_onnx_file(path: Path, *, external_data: bool = True) -> Any:
    """Read an ``.onnx`` file as data and check it (see the module docstring).

    External data must sit in the model's folder (no absolute path, no ``..``, no link
    leading out) and be long enough; a model stamped with ``prunec.sha256`` must match it.
    ``external_data=False`` leaves external tensors unread (and unchecked).

    Raises:
        PrunecError: the file is not a valid ONNX model (truncated, random bytes), its
            external data is missing or outside its folder, or it fails its checksum.
        OSError: the file cannot be read (naming it).
    """

    onnx = require("onnx", backend="onnx", pip=ONNX_PIP_HINT)
    path = Path(path)
    data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise PrunecError(f"prunec.load: '{path}' is not a valid ONNX model (damaged, "
                          f"truncated or another kind of file: {type(exc).__name__}: "
                          f"{str(exc)[:200]}).") from None
    del data
    try:  # a damaged string field fails only when read (protobuf decodes UTF-8 lazily)
        recorded = next((p.value for p in model.metadata_props if p.key == ONNX_DIGEST_KEY),
                        None)
        intact = recorded is None or recorded == onnx_digest(model)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PrunecError(f"prunec.load: '{path}' is damaged (its metadata cannot be read: "
                          f"{type(exc).__name__}).") from None
    if not intact:
        raise PrunecError(f"prunec.load: '{path}' was changed or damaged since prunec saved "
                          f"it (its content does not match the checksum recorded in it).")
    if external_data:
        load_external_data(model, path)
    return model


def load_external_data(model: Any, path: Path) -> None:
    """Read the external data of ``model`` (loaded from ``path``) after checking that every
    location is inside the model's folder and long enough (see :func:`load_onnx_file`)."""
    from onnx.external_data_helper import (
        ExternalDataInfo, _get_all_tensors, load_external_data_for_model, uses_external_data,
    )

    folder = path.resolve().parent
    external = [t for t in _get_all_tensors(model) if uses_external_data(t)]
    for tensor in external:
        info = ExternalDataInfo(tensor)
        location = str(info.location or "")
        where = f"prunec.load: '{path}': tensor {tensor.name!r} keeps its data in {location!r}"
        pure = PurePosixPath(location.replace("\\", "/"))
        if (not location or pure.is_absolute() or ".." in pure.parts
                or re.match(r"^[A-Za-z]:", location)):
            raise PrunecError(f"{where}, outside the model's folder; refusing to read it.")
        target = (folder / location)
        if not target.resolve().is_relative_to(folder):
            raise PrunecError(f"{where}, a link leading outside the model's folder; "
                              f"refusing to read it.")
        if not target.is_file():
            raise PrunecError(f"{where}, which does not exist beside it; copy that file "
                              f"next to the model.")
        end = int(info.offset or 0) + int(info.length or 0)
        if end > target.stat().st_size:
            raise PrunecError(f"{where}, which is shorter than recorded (truncated?).")
    if external:
        try:
            load_external_data_for_model(model, str(folder))
        except Exception as exc:  # onnx raises ValidationError, OSError...
            raise PrunecError(f"prunec.load: '{path}': its external data could not be read "
                              f"({type(exc).__name__}: {str(exc)[:200]}).") from None


def read_io(text: Any, path: Path | str) -> Any:
    """The :class:`~prunec.backends.base.IOSpec` recorded in a file's metadata (``None``
    when absent), its tree specs checked first (:func:`check_treespec`).

    Raises:
        PrunecError: the recorded interface is damaged.
    """
    if not text:
        return None
    try:
        if not isinstance(text, str):
            raise TypeError(f"a {type(text).__name__}, not a JSON string")
        data = json.loads(text)
        for key in ("in_spec", "out_spec"):
            if isinstance(data, dict) and isinstance(data.get(key), str):
                check_treespec(data[key], Path(path))
        return IOSpec.from_json(text)
    except PrunecError:
        raise
    except Exception as exc:  # a damaged spec fails in json, pytree or the dataclass
        raise PrunecError(f"prunec.load: the input/output interface recorded in '{path}' is "
                          f"damaged ({type(exc).__name__}: {str(exc)[:200]}).") from None


def onnx_io(model: Any, path: Path | str) -> Any:
    """The interface of an ONNX model prunec wrote, its ``prunec.*`` metadata checked.

    Raises:
        PrunecError: no ``prunec.io`` (an empty, truncated or foreign file), or
            ``prunec.io`` / ``prunec.plans`` damaged; the message names ``path``.
    """
    props = {p.key: p.value for p in model.metadata_props}
    if "prunec.io" not in props:
        raise PrunecError(f"prunec.load: '{path}' is not an ONNX model written by prunec (it "
                          f"has no 'prunec.io' metadata: empty, truncated, or made by another "
                          f"tool; prunec.frontends or onnx.load read foreign models).")
    plans = props.get("prunec.plans")
    if plans is not None:
        try:
            ok = isinstance(json.loads(plans), list)
        except ValueError:
            ok = False
        if not ok:
            raise PrunecError(f"prunec.load: the 'prunec.plans' metadata of '{path}' is "
                              f"damaged (not a JSON list); the file was edited or damaged.")
    return read_io(props["prunec.io"], path)
