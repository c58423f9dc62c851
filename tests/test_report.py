"""Reports a person reads: units, passes in words, per-layer widths, Markdown/JSON/PNG; and
the progress switch."""
from __future__ import annotations

import functools
import io
import json
import logging
import sys

import pytest
import torch

from prunec import progress
from prunec.ir.capture import capture
from prunec.passes import MagnitudePruning, PassContext
from prunec.report import PassStats, Report, describe_pass, format_count, layer_widths


class Net(torch.nn.Module):
    """conv -> conv -> pool -> two-layer MLP: conv channels and MLP neurons to prune."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 8, 3, padding=1)
        self.fc1, self.fc2 = torch.nn.Linear(8, 32), torch.nn.Linear(32, 5)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))


@functools.lru_cache(maxsize=None)  # capture is the slow part; tests only read the report
def _pruned(targets: str = "all", batch: int = 4) -> tuple[Report, torch.nn.Module]:
    torch.manual_seed(0)
    model = Net().eval()
    program = capture(model, (torch.randn(batch, 3, 6, 6),))
    report = Report.start(program, model=model, backend="torch")
    pass_ = MagnitudePruning(0.5, targets=targets, round_to=4)
    report.add_pass(pass_, PassContext().run(pass_, program))
    return report.finish(program, seconds=1.234), model


def test_format_count_adapts_units():
    assert [format_count(v) for v in (0, 7, 950, 12_345, 786_432, 6.29e6, 4.09e9)] == \
        ["0", "7", "950", "12.3K", "786K", "6.29M", "4.09G"]
    assert format_count(0.5) == "0.50"


def test_macs_are_per_sample_and_layers_are_counted():
    report, _ = _pruned("all", 4)
    one, _ = _pruned("all", 1)
    assert report.batch_size == 4 and report.macs_before == 4 * one.macs_before
    assert report.macs_per_sample_before == one.macs_before
    layers = {r.name: r for r in report.layers()}
    # conv1: 3 -> 16 over 6x6 positions, 3x3 kernel: 16 * 3 * 9 * 36 MACs per sample
    assert layers["conv1"].before.macs == 16 * 3 * 9 * 36
    assert (layers["conv1"].before.inputs, layers["conv1"].before.outputs) == (3, 16)
    assert (layers["conv1"].after.inputs, layers["conv1"].after.outputs) == (3, 8)
    assert (layers["fc2"].after.inputs, layers["fc2"].after.outputs) == (16, 5)
    assert sum(r.after.macs for r in report.layers()) == pytest.approx(report.macs_per_sample_after)


def test_pass_in_words_and_header():
    report, _ = _pruned("all", 4)
    text = str(report)
    assert "model           Net" in text and "float32[4, 3, 6, 6]" in text
    assert "MagnitudePruning(ratio=0.5, scope=global, targets=all, round_to=4, norm=2.0)" in text
    removed = report.passes[0]["units_removed"]
    assert 0 < removed < 16 + 8 + 32
    assert f"MagnitudePruning: removed {removed} " in text and " channels in 3 of 3 groups" in text
    assert "(0." in text or "s)" in text  # rounded seconds, not 0.29334...
    assert "compile took 1.2 s" in text


def test_describe_pass_cases():
    assert describe_pass({"pass": "X", "already_applied": True}).startswith("nothing")
    assert "none of the 3" in describe_pass({"pass": "X", "groups": 3, "modified": False})
    words = describe_pass({"units_removed": 112, "units_total": 240, "groups": 9,
                           "pruned_groups": 6, "options": {"targets": "mlp"}},
                          kinds={})
    assert words.startswith("removed 112 of 240 hidden units") and "in 6 of 9 groups" in words


def test_markdown_json_and_plot(tmp_path):
    report, _ = _pruned("mlp", 4)
    md = report.to_markdown()
    assert md.startswith("# prunec report") and "| fc1 | linear | 8 -> 32 | 4 -> 16 |" in md
    # conv channels and MLP neurons are both hidden (no residual): named together
    assert " hidden units (MLP neurons, conv bottleneck channels) in 3 of 3 groups" in md
    data = json.loads(report.to_json(tmp_path / "r.json"))
    assert data == json.loads((tmp_path / "r.json").read_text())
    assert data["macs_per_sample_after"] < data["macs_per_sample_before"]
    assert "plan" not in data["passes"][0] and data["passes"][0]["summary"].startswith("removed")
    assert {row["name"] for row in data["layers"]} == {"conv1", "conv2", "fc1", "fc2"}
    png = report.plot(tmp_path / "layers.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_layer_widths_of_attention_heads():
    layer = torch.nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0).eval()
    widths = layer_widths(capture(layer, (torch.randn(2, 5, 16),)), batch_size=2)
    heads = [w for w in widths.values() if w.kind == "attention"]
    assert [h.outputs for h in heads] in ([4], [])  # fast paths may not expose sdpa
    assert any(w.kind == "linear" and (w.inputs, w.outputs) == (16, 32) for w in widths.values())


# ---------------------------------------------------------------------------- progress
def test_progress_switch(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    assert not progress.enabled()  # not a terminal
    progress.set_enabled(True)
    try:
        assert progress.enabled() and not progress.enabled(False)
        with progress.step("capturing"):
            pass
        with progress.step("pruning"):
            for _ in progress.bar(range(3), desc="calibration"):
                pass
    finally:
        progress.set_enabled(None)
    text = stream.getvalue()
    assert text.startswith("capturing ... ") and "\npruning ...\n" in text
    assert "calibration" in text and "pruning: " in text
    stream.truncate(0)
    stream.seek(0)
    with progress.override(True), progress.override(False):
        assert not progress.enabled()
    assert not progress.enabled()  # back to automatic: not a terminal
    with progress.step("quiet"):
        list(progress.bar(range(3)))
    assert stream.getvalue() == ""


def test_format_seconds():
    assert [progress.format_seconds(s) for s in (0.123, 3.14, 42.4, 125, 3600 * 1.5)] == \
        ["0.12 s", "3.1 s", "42 s", "2 min 5 s", "1 h 30 min"]


def test_setup_logging_levels():
    log = progress.setup_logging(1)
    assert log.level == logging.INFO and not log.propagate
    assert progress.setup_logging(2).level == logging.DEBUG
    assert len([h for h in log.handlers if type(h).__name__ == "_TqdmHandler"]) == 1
    progress.setup_logging(0)


class _HiddenMixer(torch.nn.Module):
    """An MLP whose hidden channels go through softmax or cumsum before the second layer."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.fc1, self.fc2, self.op = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4), op

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(torch.softmax(h, -1) if self.op == "softmax" else torch.cumsum(h, -1))


@pytest.mark.parametrize("op,says", [
    ("softmax", "group fc1.weight:0 is kept: aten.softmax at node 'softmax' normalises over"),
    ("cumsum", "are kept: axis 1 mixes its channels at node 'cumsum'"),
])
def test_a_pass_that_removes_nothing_names_the_op_that_keeps_the_channels(op, says):
    import prunec

    x = torch.randn(4, 8)
    compiled = prunec.compile(_HiddenMixer(op).eval(), x,
                              [prunec.passes.VarianceBasedPruning(0.5, [x], round_to=1)])
    entry = compiled.report.passes[0]
    assert not entry["modified"] and entry["kept_because"]
    assert "VarianceBasedPruning: removed nothing: " in str(compiled.report)
    assert says in str(compiled.report)
    assert "candidate groups could be pruned" not in str(compiled.report)


class _AttentionThenMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from tests.backends.models import TinyAttention

        self.attn = TinyAttention()
        self.fc1, self.fc2 = torch.nn.Linear(32, 16), torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.attn(x))))


def test_heads_and_channels_are_counted_apart():
    import prunec

    torch.manual_seed(0)
    compiled = prunec.compile(_AttentionThenMLP().eval(), torch.randn(2, 6, 32),
                              [MagnitudePruning(0.4, round_to=1)])
    entry = compiled.report.passes[0]
    heads, removed_heads = entry["heads_total"], entry["heads_removed"]
    assert heads == 4 and entry["units_total"] > heads
    text = describe_pass(entry)
    assert text.startswith(f"removed {removed_heads} of 4 attention heads and "
                           f"{entry['units_removed'] - removed_heads} of "
                           f"{entry['units_total'] - 4} channels in ")
    # a unit count is never called heads when channels are among them
    mixed = {"units_removed": 4, "units_total": 3016, "heads_total": 16, "heads_removed": 4,
             "groups": 9, "pruned_groups": 4, "targets": "all"}
    assert describe_pass(mixed) == ("removed 4 of 16 attention heads and 0 of 3000 channels "
                                    "in 4 of 9 groups")


def test_replay_and_depth_lines_say_what_was_done():
    from prunec.rewrite import BlockDrop, PruningPlan

    plan = PruningPlan(blocks=[BlockDrop("layers.1", torch.zeros(4)), BlockDrop("layers.3", None)])
    assert describe_pass({"pass": "replay", "plan_groups": 0, "modified": True,
                          "plan_blocks": ["layers.1", "layers.3"]}) == \
        "replayed a saved plan: dropped 2 residual blocks (layers.1, layers.3)"
    assert describe_pass({"pass": "replay", "plan_groups": 1, "plan_blocks": []}) == \
        "replayed a saved plan: pruned 1 channel group"
    assert "empty" in describe_pass({"pass": "replay", "plan_groups": 0, "plan_blocks": []})
    depth = {"pass": "DepthPruning", "modified": True, "blocks": 6, "dropped": 2,
             "dropped_keys": ["layers.1", "layers.3"], "plan": plan}
    assert describe_pass(depth) == ("dropped 2 of 6 residual blocks (layers.1, layers.3); "
                                    "each is replaced by its mean output")


def test_pass_results_carry_typed_stats_that_the_report_reads():
    """A pass returns a PassStats; the report entry keeps it (the text is read from its
    attributes) and also lists every reported field by name, as before."""
    import prunec

    x = torch.randn(4, 3, 6, 6)
    program = capture(Net().eval(), (x,))
    result = MagnitudePruning(0.5, round_to=4)(program, PassContext())
    stats = result.stats
    assert isinstance(stats, PassStats) and stats.targets == "all" and stats.groups == 3
    assert stats.units_removed == stats["units_removed"] > 0 and stats.dropped is None
    assert "dropped" not in stats and stats.get("seconds") is None  # unreported: absent
    compiled = prunec.compile(Net().eval(), x, [MagnitudePruning(0.5, round_to=4)])
    entry = compiled.report.passes[0]
    typed = entry["stats"]
    assert isinstance(typed, PassStats) and typed.seconds > 0 and typed.compensations == 0
    assert entry["units_removed"] == typed.units_removed and entry["seconds"] == typed.seconds
    data = compiled.report.to_dict()["passes"][0]
    assert "stats" not in data and data["units_removed"] == typed.units_removed
    # the text comes from the typed object: change it there and the words follow
    typed.units_removed, typed.pruned_groups = 7, 2
    assert describe_pass(entry).startswith("removed 7 of ") and "in 2 of 3 groups" in \
        describe_pass(entry)


def test_pass_stats_as_a_mapping():
    """Code written against the plain dict keeps working: a dict given to PassResult is read
    into a PassStats, unknown keys land in extra, and it equals the dict of what it reports."""
    from prunec.passes import PassResult

    result = PassResult(None, True, stats={"units_removed": 3, "groups": 2, "custom": "x"})
    assert isinstance(result.stats, PassStats) and result.stats.units_removed == 3
    assert result.stats.extra == {"custom": "x"} and result.stats["custom"] == "x"
    assert result.stats == {"groups": 2, "units_removed": 3, "custom": "x"}
    result.stats["dropped"] = 1
    assert result.stats.dropped == 1 and {**result.stats}["dropped"] == 1
    del result.stats["dropped"]
    assert result.stats.dropped is None and "dropped" not in result.stats
    with pytest.raises(KeyError):
        result.stats["seconds"]


def test_macs_convention_is_stated_where_attention_is_counted():
    """The attention products (QK^T and AV) are in prunec's MACs and not in Torch-Pruning's:
    the report shows how much of the MACs they are, per sample, before and after."""
    import prunec
    from tests.backends.models import TinyAttention

    x = torch.randn(2, 6, 32)  # 6 tokens of 32 channels: QK^T and AV are 6 * 6 * 32 each
    compiled = prunec.compile(TinyAttention().eval(), x, [])
    report = compiled.report
    assert report.product_macs_before == report.product_macs_after == 2 * 2 * 6 * 6 * 32
    line = next(s for s in str(report).splitlines() if s.startswith("  attention/matmul"))
    assert "2.30K ->   2.30K" in line and "Torch-Pruning" in line
    assert report.to_dict()["product_macs_before"] == 2 * 2 * 6 * 6 * 32
    mlp = prunec.compile(_HiddenMixer("softmax").eval(), torch.randn(4, 8), []).report
    assert mlp.product_macs_before == 0 and "attention/matmul" not in str(mlp)


def test_report_entries_are_the_lineage():
    """One record: the report has one entry per lineage step, reading the step's own typed
    statistics; a pass run again is a no-op step that says its target was reached."""
    import prunec

    x = torch.randn(4, 3, 6, 6)
    passes = [MagnitudePruning(0.5, round_to=4), MagnitudePruning(0.5, round_to=4)]
    compiled = prunec.compile(Net().eval(), x, passes, verify=False)
    lineage, entries = compiled.program.lineage, compiled.report.passes
    assert [(s.name, s.modified) for s in lineage] == [("MagnitudePruning", True),
                                                       ("MagnitudePruning", False)]
    assert [(e["pass"], e["modified"]) for e in entries] == [(s.name, s.modified) for s in lineage]
    assert all(e["stats"] is s.stats for e, s in zip(entries, lineage))
    assert entries[0]["plan"] is lineage[0].plan and "plan" not in entries[1]
    assert lineage[1].stats.already_applied and not lineage[1].plan
    assert "pass 2" in str(compiled.report) and \
        "MagnitudePruning: nothing: its target was already reached" in str(compiled.report)
    assert compiled.plans == [lineage[0].plan]  # the no-op step has no plan to replay


def test_a_no_op_pass_is_in_the_lineage_with_its_reason_and_does_not_count_as_applied():
    import prunec
    from prunec.passes import VarianceBasedPruning
    from prunec.passes.base import record_unchanged

    x = torch.randn(4, 8)
    compiled = prunec.compile(_HiddenMixer("softmax").eval(), x,
                              [VarianceBasedPruning(0.5, [x], round_to=1)])
    (step,) = compiled.program.lineage
    assert not step.modified and not step.plan and step.stats.kept_because
    assert compiled.report.passes[0]["stats"] is step.stats
    assert "removed nothing: group fc1.weight:0 is kept" in str(compiled.report)
    # Re-running a no-op is harmless (another no-op step) and idempotence ignores it.
    program = compiled.program
    assert not VarianceBasedPruning(0.5, [x], round_to=1)(program).modified
    assert [s.modified for s in program.lineage] == [False, False] and program.history == []
    # A recorded no-op never stops a later run of that pass from working.
    net = capture(Net().eval(), (torch.randn(2, 3, 6, 6),))
    pass_ = MagnitudePruning(0.5, round_to=4)
    record_unchanged(net, "MagnitudePruning", pass_.config(), PassStats())
    assert pass_(net).modified and [s.modified for s in net.lineage] == [False, True]


def test_latency_statistics_are_typed_and_serialise_as_before():
    from prunec.report import LatencyStats, latency_line, pass_entry

    numbers = {"backend": "torch", "threads": 1, "fraction": 0.6, "dense_ms": 2.0,
               "predicted_fraction": 0.58, "structures": 2, "custom": 1}
    stats = PassStats(latency=dict(numbers))  # a pass that reports a dict: read into one
    assert isinstance(stats.latency, LatencyStats) and stats.latency.dense_ms == 2.0
    assert stats.latency["predicted_fraction"] == 0.58 and stats.latency.extra == {"custom": 1}
    assert stats.latency == numbers and json.loads(json.dumps(stats.latency.to_dict())) == numbers
    assert stats.latency.measured_fraction is None and stats.latency.loop == []
    report = Report(macs_before=1, params_before=1, passes=[pass_entry("P", {}, True, stats)])
    assert report.to_dict()["passes"][0]["latency"] == numbers
    achieved = {"backend": "torch", "threads": 1, "dense_ms": 2.0, "achieved_ms": 1.2,
                "achieved_fraction": 0.6, "fraction": 0.6}
    assert latency_line(achieved, report.passes).endswith("predicted 58%)")
    stats.latency["measured_fraction"], stats.latency["loop"] = 0.61, [{"budget": 0.6}]
    assert stats.latency.measured_fraction == 0.61 and stats.latency.loop == [{"budget": 0.6}]
    stats.latency["scores"] = "sensitivity-scaled"  # a pass that judged two value sets
    assert latency_line(achieved, report.passes).endswith(
        "predicted 58%; scores: sensitivity-scaled)")
