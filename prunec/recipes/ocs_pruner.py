"""OCSPruner (arXiv 2501.13439): train from scratch and prune once, mid-training, as soon as
the sub-network the saliency selects stops changing.

:class:`OneCyclePruner` drives it from the user's own training loop, in the manner of the
``torch.ao.pruning`` sparsifiers::

    pruner = OneCyclePruner(model, example_inputs, macs_reduction=0.5)
    net = pruner.module                      # a train-mode capture of ``model``
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    for epoch in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            pruner.after_step(opt)           # shrink the channels selected for removal
        scheduler.step()
        pruner.end_epoch(epoch, opt)         # select; at the stable epoch, prune physically

What happens, epoch by epoch (selection math in :mod:`prunec.recipes.ocs_selection`):

1. From ``monitor_start`` on, the end of each epoch selects a sub-network ``S_t``: the
   cost-weighted saliency of every unit of every prunable group, a per-group cap, and a
   global threshold found by binary search so that removing what falls below it cuts the
   MACs by ``macs_reduction``.
2. ``J_t`` is the mean over the groups of the Jaccard index of ``S_t``'s and ``S_{t-2}``'s
   kept units (0 for the first two selections, as in the authors' code); the selection is
   stable when the mean of the last three ``J`` is ``>= stability_threshold`` (0.999), or
   forced at ``last_search_epoch``.
3. From ``shrink_start`` on, after every optimizer step the slices of the currently selected
   units shrink: ``w <- w (1 - lambda * lr)`` on their producer rows and consumer columns of
   conv/linear weights and on their batch-norm scale and shift, with
   ``lambda = shrink + shrink_growth * floor((epoch - shrink_start) / shrink_interval)`` and
   ``lr`` of the optimizer's first parameter group. (The code's group-norm loss term carries
   no gradient; this shrink is the mechanism. The code shrinks the batch-norm scale only.)
4. At the stable epoch the program is rewritten in place (:func:`apply_plan`) and the
   optimizer's parameters and state (momentum) are sliced to match
   (:func:`prunec.train.slice_optimizer_state`): training goes on without a restart and the
   learning-rate schedule is untouched. ``pruner.module`` stays the same module object;
   sliced parameters are new ``Parameter`` objects (swapped into the optimizer), the others
   keep their identity. A ``DistributedDataParallel`` wrapper must be rebuilt then
   (``end_epoch`` returns ``pruned=True``).

Under ``torch.distributed`` every rank computes the same selection (the weights are the same)
and rank 0's is broadcast, so the ranks cannot diverge by a rounding difference.
"""
from __future__ import annotations

import json
from typing import Any

import torch

from prunec.errors import PrunecError
from prunec.ir.capture import capture
from prunec.ir.channels import ChannelGroup, analyze_channels
from prunec.ir.cost import count_macs
from prunec.recipes import ocs_selection as sel
from prunec.report import PassStats
from prunec.rewrite import PruningPlan, apply_plan
from prunec.train import slice_optimizer_state

__all__ = ["OneCyclePruner"]


class OneCyclePruner:
    """Training-time OCSPruner over a train-mode capture of ``model`` (see the module doc).

    Args:
        model: The network to train (copied at capture; never modified).
        example_inputs: A tensor or tuple of positional inputs for capture.
        macs_reduction: Fraction of the MACs to remove, in ``(0, 1)``.
        monitor_start: First epoch whose end makes a selection.
        last_search_epoch: Epoch at whose end pruning is forced if not yet stable
            (``None``: never forced).
        stability_threshold: Running mean of three Jaccard values that counts as stable.
        limit, limit_k: Per-group cap: at most ``floor(C limit (1 - exp(-limit_k C)))`` of a
            group's ``C`` units are candidates.
        shrink, shrink_growth, shrink_start, shrink_interval: The shrink's ``lambda`` schedule
            (``shrink_start`` defaults to ``monitor_start + 1``, the first epoch with a
            selection to shrink).
        tol: MACs tolerance of the threshold search.
        example_kwargs, dynamic: Passed to :func:`prunec.ir.capture.capture`.

    Raises:
        PrunecError: invalid options, or groups that cannot reach ``macs_reduction`` under
            the cap (checked at construction, before any training).
    """

    def __init__(self, model: torch.nn.Module, example_inputs: Any, *, macs_reduction: float,
                 monitor_start: int = 2, last_search_epoch: int | None = None,
                 stability_threshold: float = 0.999, limit: float = 0.75, limit_k: float = 1.0,
                 shrink: float = 1e-4, shrink_growth: float = 1e-4,
                 shrink_start: int | None = None, shrink_interval: int = 1, tol: float = 5e-4,
                 example_kwargs: dict | None = None, dynamic: bool | tuple | dict = True) -> None:
        shrink_start = monitor_start + 1 if shrink_start is None else shrink_start
        self.options = dict(macs_reduction=macs_reduction, monitor_start=monitor_start,
                           last_search_epoch=last_search_epoch,
                           stability_threshold=stability_threshold, limit=limit, limit_k=limit_k,
                           shrink=shrink, shrink_growth=shrink_growth, shrink_start=shrink_start,
                           shrink_interval=shrink_interval, tol=tol)
        _validate(self.options)
        if not isinstance(model, torch.nn.Module):
            raise PrunecError(f"OneCyclePruner: model must be a torch.nn.Module, got "
                              f"{type(model).__name__}.")
        self._user_params = {id(p) for p in model.parameters()}
        self.program = capture(model, example_inputs, example_kwargs, train=True, dynamic=dynamic)
        self.module = self.program.gm
        self.groups: list[ChannelGroup] = analyze_channels(self.program).prunable()
        if not self.groups:
            raise PrunecError("OneCyclePruner: the model has no prunable channel group "
                              "(see prunec.analyze(model, x) for why each group is fixed).")
        self.base_macs = count_macs(self.program)
        self._roles = {g.key: sel.slot_roles(self.program, g) for g in self.groups}
        self.weights = sel.cost_weights(sel.group_costs(self.program, self.groups), self.base_macs)
        self._sizes = {g.key: g.size for g in self.groups}
        self.epoch = -1                    # last epoch passed to end_epoch
        self.selection: sel.Selection | None = None
        self.kept_history: list[dict] = []  # kept units of the last three selections
        self.jaccard: list[float] = []      # one per monitored epoch
        self.stable_epoch: int | None = None
        self.forced = False
        self._replaced: set[int] = set()   # ids of parameters the pruning replaced
        self._targets = None               # cached shrink slices
        self.select()                      # fails now when the target is out of reach

    # ------------------------------------------------------------------ properties
    def config(self) -> dict:
        """The pruner's identity for reports: its name and options."""
        return {"pass": "OCSPruner", **self.options}

    @property
    def plans(self) -> list[PruningPlan]:
        """The plans applied to :attr:`program` (a view of its lineage)."""
        return self.program.plans

    @property
    def pruned(self) -> bool:
        """Whether the physical pruning has happened (a step of the lineage changed the
        program)."""
        return any(step.modified for step in self.program.lineage)

    @property
    def macs(self) -> int:
        """MACs of the program now (after pruning: the pruned model's)."""
        return count_macs(self.program)

    def shrink_factor(self, epoch: int) -> float:
        """``lambda`` of the shrink during ``epoch`` (0 before ``shrink_start``)."""
        c = self.options
        if epoch < c["shrink_start"]:
            return 0.0
        return c["shrink"] + c["shrink_growth"] * ((epoch - c["shrink_start"]) // c["shrink_interval"])

    # ------------------------------------------------------------------ selection
    def scores(self) -> dict[str, torch.Tensor]:
        """Cost-weighted saliency of every unit: ``s_c (1 - pi_g)``."""
        return {g.key: sel.saliency(self.program, g, self._roles[g.key]) * (1.0 - self.weights[g.key])
                for g in self.groups}

    def select(self) -> sel.Selection:
        """The sub-network the current weights select (no state change)."""
        c = self.options
        return sel.select_by_macs(self.program, self.groups, self.scores(), c["macs_reduction"],
                                  base_macs=self.base_macs, limit=c["limit"],
                                  limit_k=c["limit_k"], tol=c["tol"])

    # ------------------------------------------------------------------ training hooks
    @torch.no_grad()
    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Shrink the selected units' slices by ``1 - lambda * lr`` (call after every step).

        A no-op before ``shrink_start``, before the first selection and after pruning.
        """
        self._check_optimizer(optimizer)
        lam = self.shrink_factor(self.epoch + 1)
        if self.pruned or self.selection is None or lam == 0.0:
            return
        # clamped: a lambda * lr above 1 would flip signs instead of shrinking
        factor = max(0.0, 1.0 - lam * float(optimizer.param_groups[0]["lr"]))
        for tensor, axis, index in self._shrink_targets():
            tensor.index_copy_(axis, index, tensor.index_select(axis, index) * factor)

    def end_epoch(self, epoch: int, optimizer: torch.optim.Optimizer) -> dict:
        """Select, measure stability and, at the stable epoch, prune (call once per epoch).

        Returns:
            ``{"epoch", "selected", "jaccard", "stability", "macs_reduction", "pruned"}``:
            ``pruned`` is ``True`` only at the epoch whose end pruned the model.

        Raises:
            PrunecError: epochs not increasing, or an optimizer that does not hold
                ``pruner.module``'s parameters.
        """
        if not isinstance(epoch, int) or epoch <= self.epoch:
            raise PrunecError(f"OneCyclePruner.end_epoch: epoch must increase (an int above "
                              f"{self.epoch}), got {epoch!r}; resume with load_state_dict.")
        self._check_optimizer(optimizer)
        self.epoch = epoch
        event = {"epoch": epoch, "selected": False, "jaccard": None, "stability": None,
                 "macs_reduction": None, "pruned": False}
        if self.pruned or epoch < self.options["monitor_start"]:
            return event
        self._record(_broadcast(self.select()))
        event.update(selected=True, jaccard=self.jaccard[-1], stability=self.stability,
                     macs_reduction=self.selection.reduction)
        last = self.options["last_search_epoch"]
        if self.stability >= self.options["stability_threshold"] or (last is not None and epoch >= last):
            self.forced = self.stability < self.options["stability_threshold"]
            self.prune(optimizer)
            event["pruned"] = True
        return event

    @property
    def stability(self) -> float:
        """Running mean of the last three Jaccard values (0 before three)."""
        return sel.running_stability(self.jaccard)

    def prune(self, optimizer: torch.optim.Optimizer | None) -> PruningPlan:
        """Remove the current selection physically now and slice ``optimizer`` to match.

        ``end_epoch`` calls this at the stable epoch. Called directly before any selection
        (pruning at initialisation), it removes what the current weights select.
        """
        if self.pruned:
            raise PrunecError(f"OneCyclePruner: the model was already pruned at the end of "
                              f"epoch {self.stable_epoch}; OCSPruner prunes once.")
        if self.selection is None:
            self.selection = _broadcast(self.select())
        if optimizer is not None:
            self._check_optimizer(optimizer)
        plan = self.selection.plan(self._sizes)
        old = {id(p) for p in self.module.parameters()}
        slices = apply_plan(self.program, plan, config=self.config(), stats=self._stats(plan))
        if optimizer is not None:
            slice_optimizer_state(optimizer, slices)
        self._replaced |= old - {id(p) for p in self.module.parameters()}
        self.stable_epoch = self.epoch
        self._targets = None
        return plan

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to resume: epoch, selections, Jaccard history, applied plans.

        Save it with the module's and the optimizer's state dicts; see
        :meth:`load_state_dict` for the order of restoring.
        """
        return {"options": dict(self.options), "epoch": self.epoch,
                "selection": None if self.selection is None else dict(
                    removed=self.selection.removed, macs=self.selection.macs,
                    reduction=self.selection.reduction),
                "kept_history": self.kept_history, "jaccard": list(self.jaccard),
                "stable_epoch": self.stable_epoch, "forced": self.forced,
                "plans": [p.to_json() for p in self.plans]}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` into a pruner freshly built with the same options.

        A saved state past the pruning replays its plan on ``pruner.module``: restore the
        pruner first, then the module's state dict, then build the optimizer and load its
        state.

        Raises:
            PrunecError: different options, or a pruner that already trained or pruned.
        """
        if state.get("options") != self.options:
            raise PrunecError(f"OneCyclePruner.load_state_dict: the state was saved with "
                              f"options {state.get('options')}, this pruner has {self.options}.")
        if self.pruned or self.epoch >= 0:
            raise PrunecError("OneCyclePruner.load_state_dict: load into a fresh pruner "
                              "(this one has already run end_epoch or pruned).")
        s = state["selection"]
        self.selection = None if s is None else sel.Selection(
            {k: list(v) for k, v in s["removed"].items()}, s["macs"], s["reduction"])
        self.kept_history = [{k: list(v) for k, v in h.items()} for h in state["kept_history"]]
        self.jaccard = list(state["jaccard"])
        self.forced = bool(state["forced"])
        for text in state["plans"]:
            plan = PruningPlan.from_json(text)
            apply_plan(self.program, plan, config=self.config(), stats=self._stats(plan))
        self.epoch, self.stable_epoch = int(state["epoch"]), state["stable_epoch"]

    # ------------------------------------------------------------------ internals
    def _stats(self, plan: PruningPlan) -> PassStats:
        """What pruning by ``plan`` does, for the lineage step and the report (the stable
        epoch and whether it was forced are added when training ends)."""
        sizes = self._sizes
        return PassStats(groups=len(sizes), pruned_groups=len(plan.keep),
                         units_removed=sum(sizes[k] - len(v) for k, v in plan.keep.items()),
                         units_total=sum(sizes.values()))

    def _record(self, selection: sel.Selection) -> None:
        kept = selection.kept(self._sizes)
        self.kept_history = (self.kept_history + [kept])[-3:]
        if len(self.kept_history) == 3:
            self.jaccard.append(sel.selection_jaccard(kept, self.kept_history[0]))
        else:
            self.jaccard.append(0.0)  # no S_{t-2} yet: the authors' code records 0
        self.selection = selection
        self._targets = None

    def _shrink_targets(self) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
        """``(tensor, axis, indices)`` of every slice the shrink scales, cached per selection."""
        if self._targets is None:
            groups = {g.key: g for g in self.groups}
            targets = []
            for key, units in self.selection.removed.items():
                for slot, role in self._roles[key].items():
                    tensor = self.program.get_tensor(slot.param)
                    index = groups[key].indices(slot, units).to(tensor.device)
                    targets.append((tensor.data, slot.axis, index))
            self._targets = targets
        return self._targets

    def _check_optimizer(self, optimizer: Any) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise PrunecError(f"OneCyclePruner: expected the torch.optim.Optimizer that trains "
                              f"pruner.module, got {type(optimizer).__name__}.")
        own = {id(p) for p in self.module.parameters()}
        held = [p for g in optimizer.param_groups for p in g["params"]]
        stray = [p for p in held if id(p) not in own]
        if not stray and held:
            return
        if any(id(p) in self._user_params for p in stray):
            raise PrunecError("OneCyclePruner: the optimizer holds the original model's "
                              "parameters; OCSPruner trains its capture: build the optimizer "
                              "from pruner.module.parameters() after creating the pruner.")
        if any(id(p) in self._replaced for p in stray):
            raise PrunecError(f"OneCyclePruner: the optimizer holds parameters that the pruning "
                              f"at the end of epoch {self.stable_epoch} replaced; pass this "
                              f"optimizer to end_epoch (it slices it) or rebuild it from "
                              f"pruner.module.parameters().")
        raise PrunecError("OneCyclePruner: the optimizer holds no parameters of pruner.module "
                          "(or others besides them); build it from pruner.module.parameters().")


def _validate(c: dict) -> None:
    r = c["macs_reduction"]
    if not isinstance(r, (int, float)) or not 0.0 < float(r) < 1.0:
        raise PrunecError(f"OneCyclePruner: macs_reduction must be in (0, 1) (the fraction of "
                          f"MACs removed), got {r!r}.")
    if not isinstance(c["monitor_start"], int) or c["monitor_start"] < 0:
        raise PrunecError(f"OneCyclePruner: monitor_start must be an int >= 0, got {c['monitor_start']!r}.")
    last = c["last_search_epoch"]
    if last is not None and (not isinstance(last, int) or last < c["monitor_start"]):
        raise PrunecError(f"OneCyclePruner: last_search_epoch must be None or an int >= "
                          f"monitor_start ({c['monitor_start']}), got {last!r}.")
    if not 0.0 < c["stability_threshold"] <= 1.0:
        raise PrunecError(f"OneCyclePruner: stability_threshold must be in (0, 1], got "
                          f"{c['stability_threshold']!r}.")
    if not 0.0 < c["limit"] < 1.0 or c["limit_k"] <= 0:
        raise PrunecError(f"OneCyclePruner: limit must be in (0, 1) and limit_k > 0, got "
                          f"{c['limit']!r}, {c['limit_k']!r}.")
    if c["shrink"] < 0 or c["shrink_growth"] < 0 or c["shrink_interval"] < 1:
        raise PrunecError("OneCyclePruner: shrink and shrink_growth must be >= 0 and "
                          "shrink_interval >= 1.")
    if c["shrink_start"] <= c["monitor_start"]:
        raise PrunecError(f"OneCyclePruner: shrink_start ({c['shrink_start']}) must come after "
                          f"monitor_start ({c['monitor_start']}): the shrink needs a selection.")
    if not 0.0 < c["tol"] < 0.5:
        raise PrunecError(f"OneCyclePruner: tol must be in (0, 0.5), got {c['tol']!r}.")


def _broadcast(selection: sel.Selection) -> sel.Selection:
    """Rank 0's selection on every rank (identical weights give identical selections; the
    broadcast rules out a rounding difference splitting the ranks' models)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return selection
    box = [json.dumps({"removed": selection.removed, "macs": selection.macs,
                       "reduction": selection.reduction})]
    dist.broadcast_object_list(box, src=0)
    data = json.loads(box[0])
    return sel.Selection({k: list(v) for k, v in data["removed"].items()}, data["macs"],
                         data["reduction"])
