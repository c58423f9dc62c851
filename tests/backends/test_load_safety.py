"""prunec.load never runs code from a file, never writes outside a folder, needs trust=True
for native code, and answers every damaged file with one clear error.

Each malicious file carries a payload that would create a marker file; every test first
shows the payload is live (torch's own loader runs it) where that is safe to show, then
that prunec.load refuses the file and the marker never appears.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import prunec
from prunec.backends.integrity import check_sym_expr
from prunec.errors import PrunecError
from tests.backends.crafted import mlp_input, reference, rewrite_zip, saved_bytes
from tests.helpers import max_diff



class _Payload:
    """Unpickling this creates ``marker`` (a stand-in for any code an attacker runs)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pt2(tmp_path: Path, name: str = "good.pt2") -> Path:
    path = tmp_path / name
    path.write_bytes(saved_bytes("torch", str(tmp_path.parent)))
    return path


def _refused(path: Path, match: str, marker: Path | None = None, **load) -> str:
    with pytest.raises(PrunecError, match=match) as info:
        prunec.load(path, **load)
    assert marker is None or not marker.exists(), "the file's payload ran"
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


# ---------------------------------------------------------------------------- pickles
def test_a_pickled_weight_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned-weight"

    def edit(name: str, data: bytes) -> bytes:
        if name == "data/weights/model_weights_config.json":
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        if name == "data/weights/weight_0":
            return pickle.dumps(_Payload(marker))
        return data

    bad = rewrite_zip(_pt2(tmp_path), tmp_path / "bad.pt2", edit)
    try:  # torch's own loader runs the payload: the file is live
        torch.export.load(bad)
    except Exception:
        pass
    assert marker.exists()
    marker.unlink()
    _refused(bad, "pickle", marker)


def test_pickled_sample_inputs_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned-inputs"
    import io

    buffer = io.BytesIO()
    torch.save((_Payload(marker),), buffer)

    def edit(name: str, data: bytes) -> bytes:
        return buffer.getvalue() if name == "data/sample_inputs/model.pt" else data

    bad = rewrite_zip(_pt2(tmp_path), tmp_path / "bad.pt2", edit)
    try:  # weights_only=True fails, torch retries with weights_only=False: the file is live
        torch.export.load(bad)
    except Exception:
        pass
    assert marker.exists()
    marker.unlink()
    _refused(bad, "pickle", marker)


def test_legacy_archive_format_is_refused(tmp_path):
    bad = rewrite_zip(_pt2(tmp_path), tmp_path / "old.pt2",
                      lambda n, d: None if n == "archive_format" else d)
    _refused(bad, "legacy format")


# ---------------------------------------------------------------------------- eval, import
def _dynamic_pt2(tmp_path: Path) -> Path:
    class Dyn(torch.nn.Module):
        def forward(self, x):
            return x * 2

    exported = torch.export.export(Dyn(), (torch.randn(3, 4),),
                                   dynamic_shapes=({0: torch.export.Dim.AUTO},))
    path = tmp_path / "dyn.pt2"
    with open(path, "wb") as handle:
        torch.export.save(exported, handle)
    return path


def test_code_in_a_shape_expression_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned-sympy"
    evil = f"__import__('pathlib').Path({str(marker)!r}).touch() or Symbol('s0')"

    def edit(name: str, data: bytes) -> bytes:
        if name != "models/model.json":
            return data
        program = json.loads(data)
        swapped = []

        def walk(node):
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == "expr_str":
                        node[key] = evil
                        swapped.append(1)
                    else:
                        walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(program)
        assert swapped
        return json.dumps(program).encode()

    bad = rewrite_zip(_dynamic_pt2(tmp_path), tmp_path / "bad.pt2", edit)
    try:  # torch evaluates the expression with sympy.sympify: the file is live
        torch.export.load(bad)
    except Exception:
        pass
    assert marker.exists()
    marker.unlink()
    _refused(bad, "shape expression", marker)


@pytest.mark.parametrize("expr", [
    "Symbol('s0', positive=True, integer=True)", "Mul(Integer(2), Symbol('u3', integer=True))",
    "Max(2, s0) + FloorDiv(s1, 4)", "Float('0.5', precision=53)",
])
def test_plain_shape_expressions_pass(expr):
    check_sym_expr(expr, Path("x.pt2"))


@pytest.mark.parametrize("expr", [
    "__import__('os')", "Symbol('s0').__class__", "Symbol('os.system')", "eval('1')",
    "s0 ** 99999", "[x for x in ()]", "lambda: 0", "Symbol(\"s0\")",
])
def test_anything_else_in_a_shape_expression_is_refused(expr):
    with pytest.raises(PrunecError, match="not plain arithmetic"):
        check_sym_expr(expr, Path("x.pt2"))


def test_a_tree_spec_that_imports_a_module_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned-import"
    (tmp_path / "evil_module_for_prunec.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nimport enum\nclass E(enum.Enum):\n    A = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    enum_key = json.dumps([{"__enum__": True, "fqn": "evil_module_for_prunec:E", "name": "A"}])

    def poison(spec: str) -> str:
        tree = json.loads(spec)
        stack = [tree[1]]
        while stack:
            node = stack.pop()
            if node.get("type") == "builtins.dict":
                node["context"] = enum_key
                return json.dumps(tree)
            stack.extend(node.get("children_spec", []))
        raise AssertionError("no dict in the spec")

    def edit(name: str, data: bytes) -> bytes:
        if name != "models/model.json":
            return data
        program = json.loads(data)
        signature = program["graph_module"]["module_call_graph"][0]
        signature["signature"]["in_spec"] = poison(signature["signature"]["in_spec"])
        return json.dumps(program).encode()

    bad = rewrite_zip(_pt2(tmp_path), tmp_path / "bad.pt2", edit)
    try:  # torch imports the module named in the spec: the file is live
        torch.export.load(bad)
    except Exception:
        pass
    assert marker.exists()
    marker.unlink()
    sys.modules.pop("evil_module_for_prunec", None)
    _refused(bad, "imports a module", marker)
    assert "evil_module_for_prunec" not in sys.modules


def test_a_name_that_becomes_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned-name"
    evil = f"x=__import__('pathlib').Path({str(marker)!r}).touch()"
    placeholder = json.dumps("x").encode()

    def edit(name: str, data: bytes) -> bytes:
        return data.replace(placeholder, json.dumps(evil).encode()) \
            if name == "models/model.json" else data

    bad = rewrite_zip(_dynamic_pt2(tmp_path), tmp_path / "bad.pt2", edit)
    try:  # torch.fx writes the name into `def forward(self, x=...)`: the file is live
        torch.export.load(bad).module()
    except Exception:
        pass
    assert marker.exists()
    marker.unlink()
    _refused(bad, "not a Python identifier", marker)


# ---------------------------------------------------------------------------- archive names
@pytest.mark.parametrize("entry", ["../escaped.txt", "/tmp/prunec-abs-escape.txt",
                                   "archive/../../escaped.txt", "C:/escaped.txt"])
@pytest.mark.parametrize("aoti", [False, True])
def test_entries_outside_the_folder_are_refused_even_with_trust(entry, aoti, tmp_path):
    extra = {entry: b"owned"}
    if aoti:
        extra["archive/data/aotinductor/model/model.wrapper.so"] = b"\x7fELF"
    bad = rewrite_zip(_pt2(tmp_path), tmp_path / "slip.pt2", extra=extra)
    _refused(bad, "outside its folder", trust=True)
    assert not (tmp_path.parent / "escaped.txt").exists()
    assert not Path("/tmp/prunec-abs-escape.txt").exists()


def test_symlink_entries_are_refused(tmp_path):
    bad = rewrite_zip(_pt2(tmp_path), tmp_path / "link.pt2")
    with zipfile.ZipFile(bad, "a") as archive:
        info = zipfile.ZipInfo("archive/extra/link")
        info.external_attr = (0o120777 << 16)  # S_IFLNK
        archive.writestr(info, "/etc/passwd")
    _refused(bad, "symbolic link", trust=True)


# ---------------------------------------------------------------------------- native code
def test_an_aot_inductor_package_needs_trust(tmp_path):
    fake = rewrite_zip(_pt2(tmp_path), tmp_path / "package.pt2",
                       extra={"archive/data/aotinductor/model/model.wrapper.so": b"\x7fELF"})
    message = _refused(fake, r"trust=True")
    assert "native code" in message and "shared library" in message


def test_a_tensorrt_engine_needs_trust(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"ftrt" + os.urandom(64))
    io_json = json.loads(_sidecar_io())
    (tmp_path / "model.plan.json").write_text(json.dumps({"backend": "tensorrt", "io": io_json}))
    message = _refused(plan, r"trust=True")
    assert "TensorRT engine" in message and "native code" in message


def _sidecar_io() -> str:
    from prunec.backends.base import IOSpec
    from tests.backends.models import program

    return json.dumps(IOSpec.from_program(program("mlp")).to_json())


# ---------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("backend", ["onnx", "onnxruntime"])
def test_onnx_random_bytes_and_truncation_are_clear_errors(backend, tmp_path):
    good = saved_bytes(backend, str(tmp_path.parent))
    for name, data in (("random.onnx", os.urandom(4096)), ("cut.onnx", good[: len(good) // 2]),
                       ("empty.onnx", b"")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(PrunecError) as info:
            prunec.load(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def _onnx(tmp_path: Path, backend: str = "onnxruntime"):
    import onnx

    return onnx.load_model_from_string(saved_bytes(backend, str(tmp_path.parent)))


def _external(tmp_path: Path, location: str) -> Path:
    """The MLP with its first initializer's data moved to ``location`` (no checksum: a
    file edited by hand)."""
    import onnx
    from onnx.external_data_helper import set_external_data

    model = _onnx(tmp_path)
    tensor = model.graph.initializer[0]
    raw = onnx.numpy_helper.to_array(tensor).tobytes()
    set_external_data(tensor, location=location, offset=0, length=len(raw))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != "prunec.sha256"]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / "ext.onnx"
    path.write_bytes(model.SerializeToString())
    return path, raw


def test_external_data_missing_or_outside_the_folder_is_refused(tmp_path):
    path, raw = _external(tmp_path, "weights.bin")
    _refused(path, "does not exist beside it")
    (tmp_path / "weights.bin").write_bytes(raw[:8])
    _refused(path, "shorter than recorded")
    (tmp_path / "weights.bin").write_bytes(raw)
    loaded = prunec.load(path)  # in the folder and whole: loads, and answers right
    x = mlp_input()
    assert max_diff(loaded(x), reference(x)) < 1e-4
    for location in ("../weights.bin", "/etc/passwd", "sub/../../weights.bin"):
        bad, _ = _external(tmp_path, location)
        _refused(bad, "outside the model's folder")
    os.symlink(tmp_path.parent, tmp_path / "up")
    bad, _ = _external(tmp_path, "up/weights.bin")
    _refused(bad, "link leading outside")


def test_damaged_prunec_metadata_is_a_clear_error(tmp_path):
    model = _onnx(tmp_path)
    for prop in model.metadata_props:
        if prop.key == "prunec.io":
            prop.value = prop.value[:-7]
    kept = [p for p in model.metadata_props if p.key != "prunec.sha256"]
    path = tmp_path / "meta.onnx"
    import onnx

    clean = onnx.ModelProto()
    clean.CopyFrom(model)
    del clean.metadata_props[:]
    for prop in kept:
        clean.metadata_props.add(key=prop.key, value=prop.value)
    path.write_bytes(clean.SerializeToString())
    _refused(path, "interface recorded .* is damaged")
    bad = rewrite_zip(_pt2(tmp_path), tmp_path / "meta.pt2",
                      lambda n, d: d[:-3] if n == "extra/prunec.json" else d)
    _refused(bad, "metadata .* is not valid JSON")


def test_a_json_beside_an_onnx_file_is_not_taken_for_a_tensorrt_sidecar(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(saved_bytes("onnxruntime", str(tmp_path.parent)))
    (tmp_path / "model.onnx.json").write_text(json.dumps({"labels": ["cat", "dog"]}))
    x = mlp_input()
    assert max_diff(prunec.load(path)(x), reference(x)) < 1e-4


def test_edited_weight_shapes_are_refused_at_load(tmp_path):
    def edit(name: str, data: bytes) -> bytes:
        if name != "data/weights/model_weights_config.json":
            return data
        config = json.loads(data)
        meta = config["config"]["fc1.weight"]["tensor_meta"]
        sizes = meta["sizes"]
        sizes[0], sizes[1] = sizes[1], sizes[0]  # 32x16 -> 16x32, same number of values
        meta["strides"] = [{"as_int": sizes[1]["as_int"]}, {"as_int": 1}]
        return json.dumps(config).encode()

    bad = rewrite_zip(_pt2(tmp_path), tmp_path / "shape.pt2", edit)
    _refused(bad, r"weight 'fc1.weight' .* shape \[16, 32\].* graph uses .*\[32, 16\]")


def test_checksums_catch_an_edit_that_keeps_the_file_valid(tmp_path):
    def edit(name: str, data: bytes) -> bytes:
        if name == "data/weights/weight_0":
            values = bytearray(data)
            values[0] ^= 0x40  # one weight changes; the zip's CRC is recomputed
            return bytes(values)
        return data

    bad = rewrite_zip(_pt2(tmp_path), tmp_path / "edited.pt2", edit, keep_checksums=True)
    _refused(bad, "changed or damaged.*weight_0")


def test_missing_and_directory_paths(tmp_path):
    _refused(tmp_path / "nothing.pt2", "no file")
    with pytest.raises(PrunecError, match="no file"):
        prunec.load(tmp_path)


# ---------------------------------------------------------------------------- saving
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_a_failed_save_keeps_the_previous_file_and_names_the_path(backend, tmp_path,
                                                                  monkeypatch):
    from tests.backends.crafted import SUFFIX, _artifact

    artifact = _artifact(backend)
    path = artifact.save(tmp_path / f"model{SUFFIX[backend]}")
    before = path.read_bytes()
    import builtins

    real_open = builtins.open

    class FullDisk:
        """A file whose writes fail half-way, as on a full disk."""

        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def write(self, data):
            room = max(0, 100 - self.written)
            self.handle.write(bytes(data[:room]))  # half the data reaches the disk
            self.written += room
            if len(data) > room:
                raise OSError(28, "No space left on device")
            return len(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def full_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return FullDisk(handle) if "w" in mode and ".prunec-tmp-" in str(file) else handle

    monkeypatch.setattr(builtins, "open", full_open)
    with pytest.raises((OSError, PrunecError)) as info:
        artifact.save(path)
    monkeypatch.undo()
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def _save_rounds(sources: list[str], targets: list[str]) -> None:
    artifacts = [prunec.load(source) for source in sources]
    for _ in range(4):  # interleaved with the other process's saves to the same paths
        for artifact, target in zip(artifacts, targets):
            artifact.save(target)


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 4)).eval()


@pytest.mark.skipif(sys.platform != "linux", reason="forks the test process")
def test_two_processes_saving_to_one_path_leave_a_loadable_file(tmp_path):
    import multiprocessing

    from prunec.backends import lower
    from prunec.ir.capture import capture

    names = ("model.pt2", "model.onnx")
    sources = {}
    for seed in (1, 2):
        program = capture(_mlp(seed), (torch.randn(2, 16),))
        sources[seed] = [str(lower(program, backend).save(tmp_path / f"{seed}-{name}"))
                         for backend, name in zip(("torch", "onnxruntime"), names)]
    shared = tmp_path / "shared"
    shared.mkdir()
    targets = [str(shared / name) for name in names]
    context = multiprocessing.get_context("fork")  # two processes without a second import
    procs = [context.Process(target=_save_rounds, args=(sources[seed], targets))
             for seed in (1, 2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    x = torch.randn(3, 16)
    with torch.no_grad():
        expected = [_mlp(seed)(x) for seed in (1, 2)]
    for target in targets:  # one whole file of one of the two, never a mix
        out = prunec.load(target)(x)
        assert min(max_diff(out, e) for e in expected) < 1e-5
    assert sorted(p.name for p in shared.iterdir()) == sorted(names)


# ---------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("backend", ["onnx", "onnxruntime"])
def test_bfloat16_on_onnx_runtime_is_refused_before_export(backend, monkeypatch):
    import prunec.backends.onnx_backend as onnx_backend
    import prunec.backends.onnxruntime_backend as ort_backend

    def no_export(*_a, **_k):
        raise AssertionError("exported before the dtype check")

    monkeypatch.setattr(onnx_backend, "export_onnx", no_export)
    monkeypatch.setattr(ort_backend, "export_onnx", no_export)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 4)).eval().bfloat16()
    with pytest.raises(PrunecError, match=r"bfloat16.*float32.*model.float\(\)"):
        prunec.compile(model, torch.randn(2, 8, dtype=torch.bfloat16), backend=backend)


# ---------------------------------------------------------------------------- more files
@pytest.mark.parametrize("backend", ["torch", "onnx", "onnxruntime"])
def test_every_loaded_artifact_has_its_metadata(backend, tmp_path):
    from tests.backends.crafted import SUFFIX, _artifact

    for artifact in (_artifact(backend), prunec.load(_artifact(backend).save(
            tmp_path / f"m{SUFFIX[backend]}"))):
        meta = artifact.metadata
        assert meta["backend"] == backend and meta["prunec_version"]
        assert isinstance(meta["plans"], list) and json.loads(meta["io"])["input_names"]


def test_saving_into_a_read_only_directory_names_the_path(tmp_path, monkeypatch):
    from prunec import fileio
    from tests.backends.crafted import _artifact

    real_open = os.open

    def read_only(path, flags, *args):  # what a read-only folder answers (root ignores chmod)
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(fileio.os, "open", read_only)
    with pytest.raises(PermissionError) as info:
        _artifact("torch").save(tmp_path / "model.pt2")
    assert info.value.filename == str(tmp_path / "model.pt2")
    assert "Permission denied" in str(info.value) and list(tmp_path.iterdir()) == []


def test_an_onnx_file_whose_weight_shape_was_edited_is_a_clear_error(tmp_path):
    model = _onnx(tmp_path)
    tensor = max(model.graph.initializer, key=lambda t: len(t.dims))
    tensor.dims[0], tensor.dims[1] = tensor.dims[1], tensor.dims[0]
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != "prunec.sha256"]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / "edited.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(PrunecError) as info:  # at load or at the first call
        prunec.load(path)(mlp_input())
    assert "\n" not in str(info.value) and "ONNX Runtime" in str(info.value)
