"""prunec.fileio: a save happens whole or not at all, and a failure names the path."""
from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prunec import fileio
from prunec.errors import PrunecError
from prunec.fileio import atomic_directory, atomic_path, atomic_write_bytes, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".prunec-tmp-" in p.name]


def test_write_creates_the_file_with_the_umask_mode_and_leaves_nothing_beside(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second" and _leftovers(tmp_path) == []


def test_temporary_file_keeps_the_suffix_and_sits_beside_the_target(tmp_path):
    with atomic_path(tmp_path / "model.onnx") as temp:
        assert temp.parent == tmp_path and temp.suffix == ".onnx" and temp.exists()
        temp.write_bytes(b"x")
    assert (tmp_path / "model.onnx").read_bytes() == b"x"


def test_disk_full_mid_write_keeps_the_previous_file_and_names_the_path(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"previous model" * 100)
    before = target.read_bytes()

    def full_disk(temp: Path) -> None:
        with open(temp, "wb") as handle:
            handle.write(b"half of the new")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        fileio.atomic_write(target, full_disk)
    assert info.value.errno == errno.ENOSPC and str(target) in str(info.value)
    assert info.value.filename == str(target)
    assert target.read_bytes() == before and _leftovers(tmp_path) == []


def test_a_writer_failing_otherwise_gives_a_prunec_error_naming_the_path(tmp_path):
    target = tmp_path / "m.pt2"
    target.write_bytes(b"old")

    def broken(temp: Path) -> None:
        temp.write_bytes(b"partial")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0")

    with pytest.raises(PrunecError, match="m.pt2.*unchanged"):
        fileio.atomic_write(target, broken)
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_failed_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "r.txt"
    target.write_text("old")

    def no_rename(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(fileio.os, "replace", no_rename)
    with pytest.raises(OSError, match="r.txt"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and _leftovers(tmp_path) == []


def test_read_only_directory_raises_an_oserror_naming_the_path(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    real_open = os.open

    def read_only(path, flags, *args):  # as a read-only directory answers (root ignores chmod)
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(fileio.os, "open", read_only)
    with pytest.raises(PermissionError) as info:
        atomic_write_text(target, "{}")
    assert info.value.filename == str(target) and "x.json" in str(info.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only directories")
def test_really_read_only_directory(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "x.json").write_text("old")
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="x.json"):
            atomic_write_text(folder / "x.json", "new")
        assert (folder / "x.json").read_text() == "old"
    finally:
        folder.chmod(0o700)


def test_a_directory_in_the_way_is_an_oserror(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="'.*d'"):
        atomic_write_text(tmp_path / "d", "x")


def test_atomic_directory_builds_beside_and_swaps_in(tmp_path):
    target = tmp_path / "saved"
    with atomic_directory(target) as temp:
        (temp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with atomic_directory(target) as temp:  # replaces the old one whole
        (temp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    with pytest.raises(PrunecError, match="saved.*boom.*unchanged"):
        with atomic_directory(target) as temp:
            (temp / "c.txt").write_text("3")
            raise ValueError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert _leftovers(tmp_path) == []


CONCURRENT = textwrap.dedent("""
    import sys, types
    package = types.ModuleType("prunec")   # prunec.fileio alone, without importing torch
    package.__path__ = [sys.argv[3]]
    sys.modules["prunec"] = package
    from prunec.fileio import atomic_write_bytes
    tag, path = sys.argv[1], sys.argv[2]
    payload = tag.encode() * 400_000          # 400 KB: a write takes a while
    for _ in range(8):
        atomic_write_bytes(path, payload)
""")


def test_two_processes_saving_to_one_path_leave_one_complete_file(tmp_path):
    target = tmp_path / "shared.bin"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, tag, str(target),
                               str(ROOT / "prunec")], env=env) for tag in ("A", "B")]
    seen = set()
    while any(p.poll() is None for p in procs):  # a reader never sees a partial file
        if target.exists():
            data = target.read_bytes()
            assert data in (b"A" * 400_000, b"B" * 400_000)
            seen.add(data[:1])
        time.sleep(0.002)
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert target.read_bytes() in (b"A" * 400_000, b"B" * 400_000)
    assert _leftovers(tmp_path) == []
