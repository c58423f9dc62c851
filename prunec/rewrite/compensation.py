"""Mean compensation: removed channels replaced by constants, folded into their consumers.

For a value ``x`` whose pruned channels ``P`` are replaced by their calibration means ``mu``:

* linear consumer ``y = W x + b``: ``b' = b + W[:, P] @ mu[P]`` (a bias is created if absent);
* convolution without padding, or with a 1x1 kernel: every output position sees all kernel
  taps, so ``b'_o = b_o + sum_{i in P} mu_i sum_k W[o, i, k]``;
* convolution with zero padding and a kernel larger than 1: at the borders some taps read the
  padding (0, not ``mu``), so a bias is not exact there. The exact correction is the
  convolution of a constant image: ``delta = conv(1[H, W], K)`` with the one-channel kernel
  ``K[o, 0] = sum_{i in P} mu_i W[o, i]``, added to the consumer's output. It is written in the
  graph as ``conv2d(new_ones(K, [1, 1, H, W]), K) + y``: with static spatial sizes every input
  of it is constant and ONNX constant folding turns it into a constant map; with dynamic sizes
  it costs ``1 / C_in`` of the consumer's own convolution.

All arithmetic is done in float64 from the original, unsliced weights.

A compensation is keyed by its consumer: the weight parameter of the layer that reads the
removed channels, and that weight's input axis (1 for ``linear`` and ``conv``). The graph
value it replaces is the layer's input, found on whatever capture the plan is applied to
(eval or train mode, where extra nodes such as an active dropout may sit in between).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from prunec.errors import PlanError
from prunec.ir.channels import static_shape
from prunec.ir.rules.conv import conv_arg, conv_groups
from prunec.rewrite.plan import MeanCompensation

__all__ = ["fold_mean", "fold_axis", "consumer_node", "compensations_for", "convert_value_compensation",
           "WEIGHT_INPUT_AXIS"]

WEIGHT_INPUT_AXIS = 1
"""The axis of a linear or convolution weight that reads the input channels."""

aten = torch.ops.aten
_CONVS = (aten.conv1d, aten.conv2d, aten.conv3d)


def fold_mean(ctx, comp) -> bool:
    """Fold one :class:`~prunec.rewrite.plan.MeanCompensation` into its consumer; returns
    whether graph nodes were added."""
    user = consumer_node(ctx.program.graph, comp.consumer, comp.axis)
    node = user.args[0]
    axis = fold_axis(user, node)
    if not ctx.changed(node, axis):
        return False
    pruned = torch.from_numpy(np.nonzero(~ctx._mask(node, axis))[0])
    mu = comp.mean.to(torch.float64)[pruned]
    return _fold_into(ctx, user, node, pruned, mu)


def consumer_node(graph: fx.Graph, weight: str, axis: int) -> fx.Node:
    """The one linear or convolution call that reads parameter ``weight`` and can take a
    mean fold on its input channels (``axis`` of the weight).

    Raises:
        PlanError: no such call, a weight read by more than one call (a layer called twice:
            which input the means belong to is ambiguous), or another axis.
    """
    if axis != WEIGHT_INPUT_AXIS:
        raise PlanError(f"compensation of '{weight}' names axis {axis}; means fold only on a "
                        f"weight's input axis ({WEIGHT_INPUT_AXIS}).")
    users = [n for n in graph.nodes if n.op == "call_function" and len(n.args) > 1
             and isinstance(n.args[1], fx.Node) and n.args[1].op == "get_attr"
             and n.args[1].target == weight]
    if len(users) != 1 or not isinstance(users[0].args[0], fx.Node) \
            or fold_axis(users[0], users[0].args[0]) is None:
        found = "no layer" if not users else f"{len(users)} calls" if len(users) > 1 else \
            f"'{users[0].name}' ({users[0].target}), which takes no mean fold"
        raise PlanError(f"compensation names consumer weight '{weight}', but the graph has "
                        f"{found} reading it as a linear or ungrouped convolution weight; "
                        f"plans replay only on a capture of the model they were made for.")
    return users[0]


def compensations_for(value: fx.Node, mean: torch.Tensor, program) -> list:
    """One :class:`~prunec.rewrite.plan.MeanCompensation` per consumer of ``value``, each
    with the full per-channel ``mean``.

    Raises:
        PlanError: a consumer that cannot take a fold (only linear and ungrouped convolution
            layers with a parameter weight can).
    """
    comps = []
    for user in value.users:
        if fold_axis(user, value) is None:
            raise PlanError(
                f"cannot fold the means of '{value.name}' into its consumer '{user.name}' "
                f"({user.target}): only linear and ungrouped convolution consumers take a "
                f"fold. Use compensate=False or target groups whose consumers are linear.")
        weight = user.args[1].target
        if sum(1 for n in program.graph.nodes if n.op == "call_function" and len(n.args) > 1
               and getattr(n.args[1], "target", None) == weight) > 1:
            raise PlanError(f"cannot fold the means of '{value.name}' into '{weight}': that "
                            f"layer is called more than once. Use compensate=False.")
        comps.append(MeanCompensation(weight, WEIGHT_INPUT_AXIS, mean))
    return comps


def convert_value_compensation(program, comp) -> list:
    """The :class:`~prunec.rewrite.plan.MeanCompensation` list that an old, value-keyed
    :class:`~prunec.rewrite.plan.ValueCompensation` means on ``program``.

    Raises:
        PlanError: the value is not in this program's graph, with how to convert the plan.
    """
    node = next((n for n in program.graph.nodes if n.name == comp.value), None)
    if node is None or fold_axis_of(node) is None:
        raise PlanError(
            f"this plan was saved by an older prunec: its compensation names the graph value "
            f"'{comp.value}', which this program does not have (or cannot fold). Convert it on "
            f"an eval-mode capture of the model it was made for: "
            f"plan = prunec.rewrite.convert_plan(prunec.ir.capture.capture(model, x), plan); "
            f"then save plan.to_json().")
    return compensations_for(node, comp.mean, program)


def fold_axis_of(value: fx.Node) -> int | None:
    """The channel axis the consumers of ``value`` fold on (the first that takes a fold)."""
    return next((a for a in (fold_axis(u, value) for u in value.users) if a is not None), None)


def fold_axis(consumer: fx.Node, value: fx.Node) -> int | None:
    """The channel axis of ``value`` that ``consumer`` can take a mean fold on, else None.

    ``linear(value, W)`` folds on the last axis, an ungrouped ``conv(value, W)`` on axis 1;
    ``W`` must be a parameter. Passes use this to choose groups they can compensate.
    """
    if consumer.op != "call_function" or not consumer.args or consumer.args[0] is not value:
        return None
    weight = consumer.args[1] if len(consumer.args) > 1 else None
    if not isinstance(weight, fx.Node) or weight.op != "get_attr":
        return None
    packet = getattr(consumer.target, "overloadpacket", None)
    val = value.meta.get("val")
    if packet is aten.linear and isinstance(val, torch.Tensor):
        return val.dim() - 1
    if packet in _CONVS and conv_groups(consumer) == 1:
        return 1
    return None


def _fold_into(ctx, user: fx.Node, value: fx.Node, pruned, mu) -> bool:
    weight = ctx.program.get_tensor(user.args[1].target).detach().double()
    if user.target.overloadpacket is aten.linear:
        _add_to_bias(ctx, user, weight[:, pruned] @ mu)
        return False
    kernel = torch.einsum("oi...,i->o...", weight[:, pruned], mu)  # [C_out, *k]
    if _pads_borders(user, kernel):
        _add_border_exact(ctx, user, value, kernel.unsqueeze(1))
        return True
    _add_to_bias(ctx, user, kernel.flatten(1).sum(1))
    return False


def _pads_borders(user: fx.Node, kernel: torch.Tensor) -> bool:
    padding = conv_arg(user, 4, "padding", 0)
    if isinstance(padding, str):
        return padding != "valid" and kernel[0].numel() > 1
    pads = padding if isinstance(padding, (list, tuple)) else [padding]
    return any(int(p) > 0 for p in pads) and kernel[0].numel() > 1


def _out_axis(user: fx.Node) -> int:
    return len(static_shape(user)) - 1 if user.target.overloadpacket is aten.linear else 1


def _new_tensor(ctx, user: fx.Node, name: str, value: torch.Tensor, like: fx.Node) -> fx.Node:
    """Register ``value`` (sliced to the kept outputs) next to ``like``'s parameter."""
    if ctx.changed(user, _out_axis(user)):  # new tensors are not in the analysis: slice here
        value = value[ctx.kept(user, _out_axis(user))]
    program = ctx.program
    prefix = like.target.rpartition(".")[0]
    target = f"{prefix}.{name}" if prefix else name
    program.add_tensor(target, value.to(program.get_tensor(like.target).dtype), parameter=False)
    with program.graph.inserting_before(user):
        attr = program.graph.get_attr(target)
    attr.meta["val"] = like.meta["val"].new_empty(value.shape)
    return attr


def _add_to_bias(ctx, user: fx.Node, delta: torch.Tensor) -> None:
    bias = user.args[2] if len(user.args) > 2 else user.kwargs.get("bias")
    program = ctx.program
    if bias is not None:
        old = program.get_tensor(bias.target)
        program.set_tensor(bias.target, (old.detach().double() + delta).to(old.dtype))
        return
    attr = _new_tensor(ctx, user, "prunec_bias", delta, user.args[1])
    args = list(user.args) + [None] * (3 - len(user.args))
    args[2] = attr
    program.set_args(user, tuple(args))


def _add_border_exact(ctx, user: fx.Node, value: fx.Node, kernel: torch.Tensor) -> None:
    """``y + conv(ones[1, 1, *S], K)`` with the consumer's stride, padding and dilation."""
    graph = ctx.program.graph
    k_node = _new_tensor(ctx, user, "prunec_mean_kernel", kernel, user.args[1])
    shape = static_shape(value) or ()
    cursor, sizes = user, []
    for ax in range(2, len(value.meta["val"].shape)):
        if ax < len(shape) and isinstance(shape[ax], int):
            sizes.append(shape[ax])
            continue
        with graph.inserting_after(cursor):
            cursor = graph.call_function(aten.sym_size.int, (value, ax))
        sizes.append(cursor)
    last = cursor
    with graph.inserting_after(last):
        ones = graph.call_function(aten.new_ones.default, (k_node, [1, 1, *sizes]))
    with graph.inserting_after(ones):
        n = len(sizes)
        conv_args = (ones, k_node, None, *[conv_arg(user, i, name, d) for i, name, d in
                                           ((3, "stride", [1] * n), (4, "padding", [0] * n),
                                            (5, "dilation", [1] * n))], 1)
        corr = graph.call_function(user.target, conv_args)
    with graph.inserting_after(corr):
        total = graph.call_function(aten.add.Tensor, (user, corr))
    user.replace_all_uses_with(total, delete_user_cb=lambda n: n is not total)
    ctx.program.bump()
