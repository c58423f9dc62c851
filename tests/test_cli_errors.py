"""Every failure of the `prunec` command is one line on standard error and exit code 2,
checked before work where it can be; `bench DIR` runs no code from DIR without
--trust-code; layers.png is optional output."""
from __future__ import annotations

import errno
import json
import os
import sys

import pytest

import prunec.cli_commands
from prunec import fileio
from prunec.cli import main

FACTORY = ["--model", "tests.test_cli:tiny_factory"]


def _fail_if_called(*_a, **_k):
    raise AssertionError("work started before the options were checked")


@pytest.fixture
def no_work(monkeypatch):
    """Any attempt to compile fails the test: the error must come first."""
    monkeypatch.setattr(prunec.cli_commands, "compile_model", _fail_if_called)


def _one_line(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[0].startswith("prunec: error: "), err
    assert "Traceback" not in "\n".join(err) and len(err) <= 2
    for word in words:
        assert word in err[0], err[0]
    return err[0]


def test_output_under_a_file(tmp_path, capsys, no_work):
    (tmp_path / "file").write_text("x")
    assert main(["prune", *FACTORY, "--output", str(tmp_path / "file" / "sub")]) == 2
    _one_line(capsys, "--output", "is a file")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only directories")
def test_output_in_a_read_only_directory(tmp_path, capsys, no_work):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    try:
        assert main(["prune", *FACTORY, "--output", str(folder / "out")]) == 2
        _one_line(capsys, "--output", "not writable")
    finally:
        folder.chmod(0o700)


def test_a_write_refused_while_saving_is_one_line(tmp_path, capsys, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):  # the folder turned read-only after the checks
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(fileio.os, "open", read_only)
    out = tmp_path / "out"
    assert main(["prune", *FACTORY, "--output", str(out), "--finetune-epochs", "0"]) == 2
    line = _one_line(capsys, "Permission denied", str(out))
    assert ".prunec-tmp-" not in line  # the target is named, not the temporary file


def test_json_into_a_missing_directory(tmp_path, capsys, no_work):
    target = tmp_path / "missing" / "r.json"
    assert main(["prune", *FACTORY, "--no-save", "--json", str(target)]) == 2
    _one_line(capsys, "--json", "does not exist")


def _saved_dir(tmp_path, report, plan='{"plans": []}'):
    folder = tmp_path / "saved"
    folder.mkdir(exist_ok=True)
    (folder / "report.json").write_text(report if isinstance(report, str) else json.dumps(report))
    (folder / "plan.json").write_text(plan)
    return folder


RUN = {"model": "builtin", "inputs": [], "static": False}


@pytest.mark.parametrize("report, plan", [
    ("{", '{"plans": []}'),
    ({"no_run": 1}, '{"plans": []}'),
    ({"run": {"model": 3}}, '{"plans": []}'),
    ({"run": {**RUN, "inputs": ["not a shape"]}}, '{"plans": []}'),
    ({"run": RUN}, "[1, 2"),
    ({"run": RUN}, '{"plans": [{"keep": 5}]}'),
    ({"run": RUN}, '{"plans": 7}'),
])
def test_bench_on_a_malformed_directory(report, plan, tmp_path, capsys, no_work):
    folder = _saved_dir(tmp_path, report, plan)
    assert main(["bench", str(folder)]) == 2
    _one_line(capsys, str(folder))


def test_bench_runs_no_code_from_a_directory_without_trust_code(tmp_path, capsys,
                                                                monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_factory_for_prunec.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef make():\n    raise SystemExit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = _saved_dir(tmp_path, {"run": {**RUN, "model": "evil_factory_for_prunec:make"}})
    assert main(["bench", str(folder)]) == 2
    _one_line(capsys, "--trust-code", "evil_factory_for_prunec:make")
    assert not marker.exists() and "evil_factory_for_prunec" not in sys.modules
    with pytest.raises(SystemExit):  # with --trust-code the module is imported and run
        main(["bench", str(folder), "--trust-code"])
    assert marker.exists()
    sys.modules.pop("evil_factory_for_prunec", None)


def test_finetune_epochs_0_without_matplotlib_skips_the_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    out = tmp_path / "out"
    assert main(["prune", *FACTORY, "--output", str(out), "--finetune-epochs", "0"]) == 0
    printed = capsys.readouterr().out
    assert "layers.png" in printed and "skipped" in printed and "matplotlib" in printed
    assert sorted(p.name for p in out.iterdir()) == ["model.pt2", "plan.json", "report.json",
                                                     "report.md"]


def test_an_unexpected_error_is_one_line_and_debug_shows_it(tmp_path, capsys, monkeypatch):
    def broken(*_a, **_k):
        raise RuntimeError("something prunec did not expect")

    monkeypatch.setattr(prunec.cli_commands, "compile_model", broken)
    argv = ["prune", *FACTORY, "--no-save"]
    assert main(argv) == 2
    _one_line(capsys, "RuntimeError: something prunec did not expect")
    with pytest.raises(RuntimeError):
        main([*argv, "--debug"])
