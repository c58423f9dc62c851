"""Artifacts save, load without the model's code, stay true after fine-tuning, refuse bad
inputs by name, and replay plans."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import prunec
from prunec.errors import PrunecError
from prunec.passes import MagnitudePruning, VarianceBasedPruning
from prunec.rewrite import PruningPlan
from tests.helpers import max_diff
from tests.zoo import get_case

CPU_BACKENDS = ["torch", "onnx", "onnxruntime"]


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.c2(F.relu(self.b1(self.c1(x)))))
        return self.head(x.mean((2, 3)))


def _cnn(backend, **options):
    return prunec.compile(CNN().eval(), (torch.randn(2, 3, 8, 8),), [MagnitudePruning(0.5)],
                          backend=backend, backend_options=options or None)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cnn_round_trip_at_another_batch_and_image_size(backend, tmp_path):
    compiled = _cnn(backend)
    path = compiled.save(tmp_path / ("model.onnx" if "onnx" in backend else "model.pt2"))
    loaded = prunec.load(path)
    x = torch.randn(5, 3, 11, 11)
    assert max_diff(loaded(x), compiled(x)) < 1e-4
    assert max_diff(compiled(x), compiled.module(x)) < 1e-4
    assert loaded.metadata["backend"] == backend if hasattr(loaded, "metadata") else True


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bert_round_trip_at_another_batch_and_sequence_length(backend, tmp_path):
    case = get_case("hf_bert")
    compiled = prunec.compile(case.model, case.args, [MagnitudePruning(0.3)],
                              example_kwargs=case.kwargs, backend=backend)
    loaded = prunec.load(compiled.save(tmp_path / ("bert.onnx" if "onnx" in backend else "bert.pt2")))
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 100, (3, 23), generator=gen)
    mask = torch.ones(3, 23, dtype=torch.long)
    mask[1, 17:] = 0
    assert max_diff(loaded(ids, attention_mask=mask), compiled.module(ids, attention_mask=mask)) < 1e-4


def test_inductor_saves_an_aot_package_that_loads_and_matches(tmp_path):
    compiled = _cnn("inductor")
    path = compiled.save(tmp_path / "model.pt2")
    with pytest.raises(PrunecError, match="trust=True"):  # a package is native code
        prunec.load(path)
    loaded = prunec.load(path, trust=True)
    assert type(loaded).__name__ == "AOTInductorArtifact"
    assert loaded.metadata["backend"] == "inductor" and len(loaded.metadata["plans"]) == 1
    x = torch.randn(3, 3, 8, 8)
    assert max_diff(loaded(x), compiled.module(x)) < 1e-4


def test_saved_metadata_holds_the_plans(tmp_path):
    compiled = _cnn("torch")
    loaded = prunec.load(compiled.save(tmp_path / "m.pt2"))
    plans = [PruningPlan.from_json(text) for text in loaded.metadata["plans"]]
    assert [p.keep for p in plans] == [p.keep for p in compiled.plans]


def test_saved_metadata_is_readable_json(tmp_path):
    """The archive's prunec.json is indented, with the plans as JSON objects (not one
    escaped string) and each list of kept units on one line; loading gives the plans back
    as the strings ``PruningPlan.to_json`` wrote."""
    import json
    import zipfile

    compiled = _cnn("torch")
    path = compiled.save(tmp_path / "m.pt2")
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/extra/prunec.json"))
        text = archive.read(name).decode()
    lines = text.splitlines()
    assert len(lines) > 20 and '"keep": {' in [line.strip() for line in lines]
    stored = json.loads(text)["plans"]
    assert stored == [json.loads(p.to_json()) for p in compiled.plans]  # objects, not strings
    kept = next(iter(compiled.plans[0].keep.values()))
    assert any(line.strip().endswith(json.dumps(kept) + ",") or line.strip().endswith(
        json.dumps(kept)) for line in lines)
    metadata = prunec.load(path).metadata
    assert metadata["plans"] == [p.to_json() for p in compiled.plans]
    # the lineage: every step, with whether it changed the program; the plans say their pass
    steps = compiled.program.lineage
    assert [(s["name"], s["modified"]) for s in metadata["lineage"]] == \
        [(s.name, s.modified) for s in steps]
    from prunec.rewrite.plan import plans_from_metadata

    assert [p.source for p in plans_from_metadata(metadata)] == \
        [s.config for s in steps if s.modified]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bad_inputs_are_refused_by_name(backend, tmp_path):
    compiled = _cnn(backend)
    for artifact in (compiled.artifact, prunec.load(compiled.save(
            tmp_path / ("m.onnx" if "onnx" in backend else "m.pt2")))):
        with pytest.raises(PrunecError, match="'x'.*torch.float32.*int64"):
            artifact(torch.zeros(2, 3, 8, 8, dtype=torch.long))
        with pytest.raises(PrunecError, match="'x' must have shape"):
            artifact(torch.randn(2, 3, 8))
        with pytest.raises(PrunecError, match=r"\[\*, 3, \*, \*\]"):
            artifact(torch.randn(2, 4, 8, 8))


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["inductor"])
def test_artifact_follows_finetuning(backend):
    compiled = _cnn(backend)
    x = torch.randn(4, 3, 8, 8)
    before = compiled(x)
    data = [(torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))) for _ in range(3)]
    prunec.finetune(compiled, data, epochs=1, lr=1e-2, original=CNN().eval())
    after = compiled(x)
    assert max_diff(after, compiled.module(x)) < 1e-4  # the artifact runs the new weights
    assert max_diff(after, before) > 1e-3


def test_replay_saved_plans_with_the_public_api():
    gen = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(4)]
    x = torch.randn(2, 3, 8, 8)
    first = prunec.compile(CNN().eval(), (x,), [VarianceBasedPruning(0.5, calib, targets="all")])
    texts = [plan.to_json() for plan in first.plans]
    again = prunec.compile(CNN().eval(), (x,), plans=[PruningPlan.from_json(t) for t in texts])
    assert torch.equal(first(x), again(x))
    assert again.report.macs_after == first.report.macs_after


def test_finetune_accepts_a_program():
    compiled = _cnn("torch")
    version = compiled.program.version
    data = [(torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,)))]
    program, history = prunec.finetune(compiled.program, data, lr=1e-2, original=CNN().eval())
    assert program is compiled.program and program.version > version and len(history) == 1
