"""Every zoo model captures, and the program computes what the model computes."""
from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree

from prunec.ir.capture import capture
from tests.zoo import ZOO, ZooCase

ATOL = 1e-5


def _leaves(out) -> list[torch.Tensor]:
    return [x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]


def _assert_same(got, want) -> None:
    got, want = _leaves(got), _leaves(want)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert (g - w).abs().max().item() < ATOL


def _batch_is_dynamic(program) -> bool:
    vals = [n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder"]
    tensors = [v for v in vals if isinstance(v, torch.Tensor) and v.dim() > 0]
    return bool(tensors) and all(isinstance(v.shape[0], torch.SymInt) for v in tensors)


def _grow_batch(case: ZooCase) -> tuple[tuple, dict]:
    """The example inputs with the first sample appended once more (batch + 1)."""
    grow = lambda x: torch.cat([x, x[:1]]) if isinstance(x, torch.Tensor) else x  # noqa: E731
    return pytree.tree_map(grow, case.args), pytree.tree_map(grow, case.kwargs)


@pytest.fixture(scope="module", params=sorted(ZOO))
def captured(request):
    case = ZOO[request.param]()
    return case, capture(case.model, case.args, case.kwargs)


def test_zoo_case_is_eval_and_seeded(captured):
    case, _ = captured
    assert not case.model.training
    again = ZOO[case.name]()
    for (name, a), (_, b) in zip(case.model.state_dict().items(),
                                 again.model.state_dict().items()):
        assert torch.equal(a, b), name


@torch.no_grad()
def test_program_matches_model(captured):
    case, program = captured
    _assert_same(program.run(*case.args, **case.kwargs), case())


@torch.no_grad()
def test_program_runs_other_batch_size(captured):
    case, program = captured
    assert _batch_is_dynamic(program), f"capture made the batch of {case.name} static"
    args, kwargs = _grow_batch(case)
    _assert_same(program.run(*args, **kwargs), case.model(*args, **kwargs))



@torch.no_grad()
def test_default_model_is_trained_and_captures():
    from prunec.zoo import default_model, digits_data, evaluate

    model, args = default_model()
    _, _, x_test, y_test = digits_data()
    assert not model.training and args[0].shape == (8, 1, 8, 8)
    assert evaluate(model, x_test, y_test) > 0.95
    program = capture(model, args)
    _assert_same(program.run(x_test), model(x_test))
