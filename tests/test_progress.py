"""prunec.progress: one switch decides whether bars and step lines are drawn; times are
rounded for people; logging goes through the prunec logger without tearing bars."""
from __future__ import annotations

import logging
import re

import pytest

from prunec import progress


@pytest.fixture(autouse=True)
def _automatic():
    previous = progress._setting["enabled"]
    progress.set_enabled(None)
    yield
    progress.set_enabled(previous)
    progress._line["open"] = False


@pytest.mark.parametrize("seconds, text", [(0.004, "0.00 s"), (0.4249, "0.42 s"), (3.14, "3.1 s"),
                                           (42.4, "42 s"), (89.4, "89 s"), (125, "2 min 5 s"),
                                           (120, "2 min"), (3780, "1 h 3 min"), (7200, "2 h")])
def test_format_seconds(seconds, text):
    assert progress.format_seconds(seconds) == text


def test_enabled_order_argument_then_setting_then_terminal(monkeypatch):
    monkeypatch.setattr(progress, "_stderr_is_terminal", lambda: True)
    assert progress.enabled() and progress.enabled(True)
    assert not progress.enabled(False)
    progress.set_enabled(False)
    assert not progress.enabled() and not progress.enabled(True)
    progress.set_enabled(True)
    assert progress.enabled()
    monkeypatch.setattr(progress, "_stderr_is_terminal", lambda: False)
    progress.set_enabled(None)
    assert not progress.enabled() and not progress.enabled(True)


def test_override_restores_the_previous_setting_even_on_error():
    progress.set_enabled(False)
    with pytest.raises(RuntimeError):
        with progress.override(True):
            assert progress.enabled()
            raise RuntimeError
    assert progress._setting["enabled"] is False
    with progress.override(None):
        assert progress._setting["enabled"] is False


def test_step_writes_message_and_time_or_failed(capsys):
    progress.set_enabled(True)
    with progress.step("capturing"):
        pass
    err = capsys.readouterr().err
    assert err.startswith("capturing ... ") and err.endswith(" s\n")
    with pytest.raises(ValueError):
        with progress.step("lowering"):
            raise ValueError
    assert capsys.readouterr().err == "lowering ... failed\n"
    progress.set_enabled(False)
    with progress.step("quiet"):
        pass
    assert capsys.readouterr().err == ""


def test_a_bar_inside_a_step_ends_its_line_first(capsys):
    progress.set_enabled(True)
    with progress.step("training"):
        for _ in progress.bar(range(2), desc="epochs"):
            pass
    err = capsys.readouterr().err
    assert err.startswith("training ...\n")
    assert re.search(r"[\r\n]training: [0-9.]+ s\n$", err)  # the time on a line of its own


def test_a_disabled_bar_iterates_and_draws_nothing(capsys):
    assert list(progress.bar([1, 2, 3], progress=False)) == [1, 2, 3]
    assert capsys.readouterr().err == ""


def test_setup_logging_levels_and_is_idempotent(capsys):
    log = progress.setup_logging(0)
    assert log.level == logging.WARNING
    assert progress.setup_logging(1).level == logging.INFO
    assert progress.setup_logging(2).level == logging.DEBUG
    assert sum(isinstance(h, progress._TqdmHandler) for h in log.handlers) == 1
    log.warning("careful")
    assert "prunec WARNING prunec: careful" in capsys.readouterr().err
    progress.setup_logging(0)
    log.info("hidden")
    assert "hidden" not in capsys.readouterr().err


def test_say_is_shown_only_with_progress(capsys):
    progress.say("hello", progress=False)
    assert capsys.readouterr().err == ""
    progress.set_enabled(True)
    progress.say("hello")
    assert capsys.readouterr().err == "hello\n"
