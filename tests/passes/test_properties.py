"""Property-based tests: random architectures from the supported ops keep every invariant."""
from __future__ import annotations

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from prunec.ir.capture import capture
from prunec.ir.channels import analyze_channels
from prunec.ir.cost import count_macs
from prunec.passes import MagnitudePruning, RandomPruning
from prunec.rewrite import PruningPlan, apply_plan
from tests.helpers import max_diff, zeroed_copy
from tests.property_models import BLOCKS, RandomCNN, RandomTransformer

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow],
                    phases=[Phase.explicit, Phase.reuse, Phase.generate])

cnn_spec = st.tuples(
    st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=4),
    st.lists(st.sampled_from([16, 24, 32]), min_size=4, max_size=4),
    st.booleans(),
    st.floats(0.1, 0.7),
    st.sampled_from([1, 4, 8]),
)
layer = st.sampled_from([(4, 4), (4, 2), (2, 1)]).flatmap(
    lambda hk: st.tuples(st.just(hk[0]), st.just(hk[1]), st.sampled_from([16, 32, 48]), st.booleans()))
tf_spec = st.tuples(st.lists(layer, min_size=1, max_size=3), st.booleans(), st.floats(0.1, 0.7),
                    st.sampled_from([1, 8]))


def _check(model, x, ratio, round_to, seed=0):
    torch.manual_seed(seed)
    model.eval()
    with torch.no_grad():
        for m in model.modules():  # non-trivial BN statistics so zeroing tests mean something
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
        ref = model(x)
    program = capture(model, (x,))
    same = program.clone()
    assert not MagnitudePruning(0.0)(same).modified
    assert max_diff(ref, same.run(x)) < 1e-5
    for pass_ in (MagnitudePruning(ratio, round_to=round_to), RandomPruning(ratio, round_to=round_to)):
        p = program.clone()
        result = pass_(p)
        out = p.run(x)
        assert out.shape == ref.shape
        if result.modified:
            assert count_macs(p) < count_macs(program)
            groups = analyze_channels(program).by_key()
            for key, kept in result.plan.keep.items():
                widest = max(s.width for s in groups[key].slots)  # see unit_step
                assert len(kept) * widest % round_to == 0
    analysis = analyze_channels(program)
    plan = MagnitudePruning(ratio, round_to=round_to).plan(program, analysis.prunable(), None)
    plain = PruningPlan({k: v for k, v in plan.keep.items() if "norm" not in analysis.by_key()[k].tags})
    p = program.clone()
    apply_plan(p, plain)
    with torch.no_grad():
        assert max_diff(zeroed_copy(model, analysis, plain)(x), p.run(x)) < 1e-4


@SETTINGS
@given(cnn_spec)
def test_random_cnns(spec):
    kinds, widths, flatten, ratio, round_to = spec
    torch.manual_seed(len(kinds))
    model = RandomCNN(kinds, widths, flatten=flatten)
    _check(model, torch.randn(2, 3, 8, 8), ratio, round_to)


@SETTINGS
@given(tf_spec)
def test_random_transformers(spec):
    layers, norm, ratio, round_to = spec
    torch.manual_seed(len(layers))
    model = RandomTransformer(layers, norm=norm)
    _check(model, torch.randn(2, 5, 12), ratio, round_to)
