"""Optimizer state that follows a rewrite: training goes on after pruning without a restart.

:func:`~prunec.rewrite.apply.apply_plan` returns a :class:`~prunec.rewrite.apply.Slices` map:
for every sliced parameter its kept indices per axis and the old and new tensor objects.
Parameters that were not sliced keep their identity, so the optimizer still holds them.
For each sliced one, :func:`slice_optimizer_state` puts the new parameter where the old one
was in ``optimizer.param_groups`` and slices its state along the same axes:

    state[new][k] = state[old][k].index_select(axis, kept)   for every tensor of the
                                                              parameter's shape
    (SGD ``momentum_buffer``; Adam/AdamW ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``)

Scalars and tensors of other shapes (Adam's ``step``) are kept as they are. Parameters that
a rewrite removed entirely (a dropped block) leave the optimizer with their state.
"""
from __future__ import annotations

from typing import Iterable

import torch

from prunec.errors import PrunecError

__all__ = ["slice_optimizer_state"]


def slice_optimizer_state(optimizer: torch.optim.Optimizer, slices,
                          removed: Iterable[torch.Tensor] = ()) -> torch.optim.Optimizer:
    """Make ``optimizer`` hold the parameters ``apply_plan`` produced, with sliced state.

    Args:
        optimizer: Any ``torch.optim.Optimizer`` built over the program's parameters.
        slices: The :class:`~prunec.rewrite.apply.Slices` that ``apply_plan`` returned.
        removed: Parameter objects the rewrite dropped entirely (their state goes too).

    Returns:
        ``optimizer``, updated in place.

    Raises:
        PrunecError: a sliced parameter's state has the old shape along no sliced axis
            (the optimizer was built over other tensors than the program's).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise PrunecError(f"slice_optimizer_state needs a torch.optim.Optimizer, got "
                          f"{type(optimizer).__name__}.")
    swap = {id(old): (name, old, new) for name, (old, new) in slices.replaced.items()}
    gone = {id(p) for p in removed}
    for group in optimizer.param_groups:
        params = []
        for param in group["params"]:
            if id(param) in gone:
                optimizer.state.pop(param, None)
                continue
            if id(param) in swap:
                name, old, new = swap[id(param)]
                if not isinstance(new, torch.nn.Parameter):
                    raise PrunecError(f"'{name}' was a parameter in the optimizer but is no "
                                      f"longer one in the program.")
                state = optimizer.state.pop(old, None)
                if state is not None:
                    optimizer.state[new] = _sliced_state(state, old, slices[name])
                param = new
            params.append(param)
        group["params"] = params
    return optimizer


def _sliced_state(state: dict, old: torch.Tensor, kept: dict[int, torch.Tensor]) -> dict:
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.shape == old.shape and value.dim() > 0:
            for axis, index in kept.items():
                value = value.index_select(axis, index.to(value.device))
        out[key] = value
    return out
