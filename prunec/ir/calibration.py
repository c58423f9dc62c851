"""Per-channel calibration statistics: streaming float64 mean and variance at any node.

For each target node ``t`` with channel axis ``a``, every position on the other axes (batch,
tokens, spatial positions) is one sample of the ``C = value.shape[a]`` channels. Over all
samples ``x_1 .. x_n`` of a channel the statistics are

    mean = (1/n) sum_i x_i,      M2 = sum_i (x_i - mean)^2,      var = M2 / (n - 1).

Each batch is reduced to ``(n_b, mean_b, M2_b)`` in float64 and merged into the running
statistics with Chan et al.'s parallel formula (``ChannelStats.merge``), so the result does
not depend on how the data is batched or sharded, up to float64 rounding.

Padding: with ``mask`` set, an attention-style mask ``m`` of shape ``[B, N]`` (1 = real
token, 0 = padding) is read from each item. A value of ``ndim >= 3`` whose dims 0 and 1 equal
``m.shape`` and whose channel axis is ``>= 2`` is treated as ``[B, N, ...]``: its positions
with ``m == 0`` are dropped. Any other value (``[B, C, H, W]`` convs, ``[B, H, N, D]``
attention heads, pooled ``[B, C]`` features) counts every position.

Distributed: when ``torch.distributed`` is initialised, every rank reduces its own share of
the data, then the per-rank ``(n, mean, M2)`` are all-gathered in float64 and merged in rank
order, so every rank returns the statistics of the union of all shards.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch
import torch.fx as fx

from prunec.errors import CalibrationError
from prunec.ir.calibration_checks import _distributed, check_calibration, check_program_inputs
from prunec.ir.interpret import ProgramInterpreter, describe_node, resolve_nodes, split_inputs
from prunec.ir.program import Program
from prunec.progress import bar as progress_bar
from prunec.validate import user_items

__all__ = ["ChannelStats", "collect_statistics", "MaskSpec"]

MaskSpec = Optional[Union[str, Callable[[Any], torch.Tensor]]]


@dataclass
class ChannelStats:
    """Streaming per-channel statistics.

    Attributes:
        count: Number of samples ``n`` pooled per channel.
        mean: float64 ``[C]``, the per-channel mean.
        m2: float64 ``[C]``, the per-channel sum of squared deviations from the mean.
    """

    count: int
    mean: torch.Tensor
    m2: torch.Tensor

    @classmethod
    def empty(cls, channels: int, device: torch.device | str = "cpu") -> "ChannelStats":
        """No samples yet: ``n = 0``, zero mean and M2."""
        zeros = torch.zeros(channels, dtype=torch.float64, device=device)
        return cls(0, zeros, zeros.clone())

    @classmethod
    def from_samples(cls, samples: torch.Tensor) -> "ChannelStats":
        """Statistics of ``samples`` shaped ``[n, C]`` (rows are samples), in float64."""
        x = samples.detach().to(torch.float64)
        n = x.shape[0]
        if n == 0:
            return cls.empty(x.shape[1], x.device)
        var, mean = torch.var_mean(x, dim=0, correction=0)
        return cls(n, mean, var * n)

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    @property
    def var(self) -> torch.Tensor:
        """Unbiased sample variance ``M2 / (n - 1)``; NaN when ``n < 2``."""
        if self.count < 2:
            return torch.full_like(self.m2, float("nan"))
        return self.m2 / (self.count - 1)

    @property
    def std(self) -> torch.Tensor:
        """``sqrt(var)``."""
        return self.var.sqrt()

    def merge(self, other: "ChannelStats") -> "ChannelStats":
        """The statistics of both sample sets together (Chan et al., 1979).

        With ``n = n_a + n_b`` and ``d = mean_b - mean_a``:
        ``mean = mean_a + d n_b / n`` and ``M2 = M2_a + M2_b + d^2 n_a n_b / n``.
        """
        if self.channels != other.channels:
            raise CalibrationError(
                f"cannot merge statistics of {self.channels} and {other.channels} channels; "
                f"a target's channel count changed between batches."
            )
        if other.count == 0:
            return ChannelStats(self.count, self.mean.clone(), self.m2.clone())
        if self.count == 0:
            return ChannelStats(other.count, other.mean.clone(), other.m2.clone())
        n = self.count + other.count
        other_mean, other_m2 = other.mean.to(self.mean.device), other.m2.to(self.m2.device)
        delta = other_mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other_m2 + delta.square() * (self.count * other.count / n)
        return ChannelStats(n, mean, m2)

    def cpu(self) -> "ChannelStats":
        return ChannelStats(self.count, self.mean.cpu(), self.m2.cpu())


# ---------------------------------------------------------------------------- one value
def _resolve_mask(mask: MaskSpec, item: Any, index: int) -> torch.Tensor | None:
    """The ``[B, N]`` boolean keep-mask of one item, or None without masking."""
    if mask is None:
        return None
    if isinstance(mask, str):
        if not isinstance(item, Mapping) or mask not in item:
            raise CalibrationError(
                f"calibration item {index} has no key {mask!r} to read the padding mask from; "
                f"use dict items holding it, or pass mask=callable(item) -> [B, N] tensor."
            )
        m = item[mask]
    else:
        m = mask(item)
    if not isinstance(m, torch.Tensor) or m.dim() != 2:
        shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
        raise CalibrationError(
            f"the padding mask of calibration item {index} must be a [B, N] tensor "
            f"(1 = token, 0 = padding), got {shape}."
        )
    return m != 0


def _batch_stats(value: torch.Tensor, axis: int, keep: torch.Tensor | None) -> ChannelStats:
    """float64 ``(n, mean, M2)`` of one value, pooling every axis but ``axis``."""
    if keep is not None and _mask_applies(value, axis, keep):
        rows = value.detach().movedim(axis, -1)[keep.to(value.device)]
        return ChannelStats.from_samples(rows.reshape(-1, value.shape[axis]))
    x = value.detach().to(torch.float64)
    channels = x.shape[axis]
    n = x.numel() // channels if channels else 0
    if n == 0:
        return ChannelStats.empty(channels, x.device)
    dims = [d for d in range(x.dim()) if d != axis]
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    return ChannelStats(n, mean, var * n)


def _mask_applies(value: torch.Tensor, axis: int, keep: torch.Tensor) -> bool:
    return value.dim() >= 3 and axis >= 2 and tuple(value.shape[:2]) == tuple(keep.shape)


# ---------------------------------------------------------------------------- targets
def _check_targets(program: Program, targets: Mapping[str, int]) -> dict[str, int]:
    """Targets with non-negative axes, checked against the nodes' ``meta["val"]``."""
    if not targets:
        raise CalibrationError("collect_statistics needs at least one target node.")
    nodes = resolve_nodes(program, targets)
    return {name: _normalize_axis(nodes[name], axis) for name, axis in targets.items()}


def _normalize_axis(node: fx.Node, axis: int) -> int:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise CalibrationError(
            f"{describe_node(node)} does not produce a single tensor, so it has no channels; "
            f"target the tensor node that consumes or produces it instead."
        )
    if not -val.dim() <= axis < val.dim():
        raise CalibrationError(
            f"channel axis {axis} is out of range for {describe_node(node)}, whose value has "
            f"{val.dim()} dims {tuple(val.shape)}; use an axis in [-{val.dim()}, {val.dim()})."
        )
    return axis % val.dim()


class _Accumulator:
    """Running statistics of all targets, fed by interpreter observers."""

    def __init__(self, program: Program, axes: dict[str, int]) -> None:
        self.nodes = resolve_nodes(program, axes)
        self.axes = axes
        self.stats: dict[str, ChannelStats | None] = {name: None for name in axes}
        self.keep: torch.Tensor | None = None
        self.index = 0

    def observer(self, name: str) -> Callable[[Any], None]:
        def observe(value: Any) -> None:
            self.add(name, value)
        return observe

    def add(self, name: str, value: Any) -> None:
        node = self.nodes[name]
        if not isinstance(value, torch.Tensor):
            raise CalibrationError(f"{describe_node(node)} produced {type(value).__name__}, "
                                   f"not a tensor; it cannot be a statistics target.")
        batch = _batch_stats(value, self.axes[name], self.keep)
        finite = bool(torch.isfinite(batch.mean).all() and torch.isfinite(batch.m2).all())
        if batch.count and not finite:
            raise CalibrationError(
                f"{describe_node(node)} produced NaN or inf in calibration item {self.index}; "
                f"check that item, the model's dtype (fp16 overflow) and that it runs in eval "
                f"mode."
            )
        running = self.stats[name]
        self.stats[name] = batch if running is None else running.merge(batch)


# ---------------------------------------------------------------------------- collection
def collect_statistics(
    program: Program,
    calibration: Iterable[Any],
    targets: Mapping[str, int],
    *,
    mask: MaskSpec = None,
    progress: bool | None = None,
    max_batches: int | None = None,
) -> dict[str, ChannelStats]:
    """Per-channel mean and variance of target node values over calibration data.

    One pass over the data collects every target. The program runs as captured (collect
    VBP statistics on a program captured in eval mode).

    Args:
        program: The program to run.
        calibration: Items: a tensor, a tuple/list of positional inputs, or a dict of
            keyword inputs each (a ``DataLoader`` over such items works).
        targets: ``{node name: channel axis of its value}``; negative axes count from the end.
        mask: Padding mask ``[B, N]`` per item: a dict key, a callable ``item -> mask``, or
            None. See the module docstring for which values it applies to.
        progress: False: no bar; otherwise a bar on rank 0 as :mod:`prunec.progress`
            decides (on a terminal, unless turned off).
        max_batches: Stop after this many items (per rank when distributed).

    Returns:
        ``{node name: ChannelStats}`` with float64 tensors on the CPU.

    Raises:
        CalibrationError: for unknown nodes, out-of-range axes, non-tensor targets, malformed
            items or masks, NaN/inf values (naming the node), or no data (zero items or zero
            counted positions, over all ranks).
    """
    check_calibration(calibration, "collect_statistics")
    axes = _check_targets(program, targets)
    distributed = _distributed()
    acc = _Accumulator(program, axes)
    error: BaseException | None = None
    try:
        _run_pass(program, calibration, acc, mask, progress if _rank() == 0 else False,
                  max_batches)
    except Exception as exc:  # re-raised below; ranks must agree before any of them raises
        if not distributed:
            raise
        error = exc
    stats = acc.stats
    if distributed:
        stats = _all_merge(stats, error)
    return _finish(acc, stats)


def _run_pass(program: Program, calibration: Iterable[Any], acc: _Accumulator, mask: MaskSpec,
              progress: bool, max_batches: int | None) -> None:
    interp = ProgramInterpreter(program, observers={n: acc.observer(n) for n in acc.axes})
    total = _length(calibration, max_batches)
    items = user_items(calibration)  # the loader's own errors pass through unchanged
    items = items if max_batches is None else itertools.islice(items, max_batches)
    bar = progress_bar(items, total=total, desc="calibration", unit="batch", progress=progress)
    try:
        with torch.no_grad():
            for index, item in enumerate(bar):
                acc.index = index
                acc.keep = _resolve_mask(mask, item, index)
                args, kwargs = _checked_item(program, item, index)
                try:
                    interp.call(args, kwargs)
                except RuntimeError as exc:  # a dtype mismatch shows only when run
                    _explain_failure(program, args, kwargs, index, exc)
                    raise
    finally:
        bar.close()


def _checked_item(program: Program, item: Any, index: int) -> tuple[tuple, dict]:
    """The item as ``(args, kwargs)``, checked against the captured inputs (structure, rank,
    static sizes) so that a malformed batch fails here, naming itself, not deep in an op."""
    args, kwargs = split_inputs(item)
    check_program_inputs(program, args, kwargs, where=f"calibration item {index}",
                         error=CalibrationError, dtypes=False)
    return args, kwargs


def _explain_failure(program: Program, args: tuple, kwargs: dict, index: int,
                     exc: BaseException) -> None:
    """After a failed run: a :class:`CalibrationError` naming the input whose dtype differs
    from the captured one, if one does (else the caller re-raises ``exc``)."""
    try:
        check_program_inputs(program, args, kwargs, where=f"calibration item {index}",
                             error=CalibrationError)
    except CalibrationError as mismatch:
        raise mismatch from exc


def _length(calibration: Iterable[Any], max_batches: int | None) -> int | None:
    try:
        total = len(calibration)  # type: ignore[arg-type]
    except TypeError:
        return max_batches
    return total if max_batches is None else min(total, max_batches)


def _finish(acc: _Accumulator,
            stats: Mapping[str, ChannelStats | None]) -> dict[str, ChannelStats]:
    result: dict[str, ChannelStats] = {}
    for name, s in stats.items():
        if s is None or s.count == 0:
            raise CalibrationError(
                f"no calibration samples reached {describe_node(acc.nodes[name])}: the data "
                f"was empty or every position was masked as padding; pass a non-empty "
                f"calibration set."
            )
        result[name] = s.cpu()
    return result


# ---------------------------------------------------------------------------- distributed
def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _collective_device() -> torch.device:
    import torch.distributed as dist

    if "nccl" in str(dist.get_backend()).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return parts


def _all_merge(stats: dict[str, ChannelStats | None],
               error: BaseException | None) -> dict[str, ChannelStats | None]:
    """Merge every rank's statistics, identically on every rank.

    Round 1 gathers ``[failed, C_1 .. C_k]`` so that all ranks learn of a failure (and raise
    together instead of waiting forever in round 2) and agree on the channel counts, even
    ranks that saw no data. Round 2 gathers ``[n, mean, M2]`` per target in float64 (exact
    for counts below 2^53) and merges them in rank order.
    """
    names = sorted(stats)
    device = _collective_device()
    header = torch.tensor([1.0 if error else 0.0] + [_channels(stats[n]) for n in names],
                          dtype=torch.float64, device=device)
    headers = torch.stack(_all_gather(header)).cpu()
    if error is not None:
        raise error
    failed = [r for r in range(headers.shape[0]) if headers[r, 0] > 0]
    if failed:
        raise CalibrationError(f"statistics collection failed on rank(s) {failed}; see their "
                               f"error messages.")
    channels = [int(c) for c in headers[:, 1:].max(dim=0).values.tolist()]
    packed = torch.cat([_pack(stats[n], c, device) for n, c in zip(names, channels)])
    gathered = [part.cpu() for part in _all_gather(packed)]
    merged: dict[str, ChannelStats | None] = {}
    offset = 0
    for name, c in zip(names, channels):
        merged[name] = _merge_ranks([part[offset:offset + 1 + 2 * c] for part in gathered], c)
        offset += 1 + 2 * c
    return merged


def _channels(s: ChannelStats | None) -> float:
    return float(s.channels) if s is not None else -1.0


def _pack(s: ChannelStats | None, channels: int, device: torch.device) -> torch.Tensor:
    """``[n, mean_1 .. mean_C, M2_1 .. M2_C]`` in float64."""
    s = s if s is not None else ChannelStats.empty(channels)
    if s.channels != channels:
        raise CalibrationError(f"ranks disagree on a target's channel count ({s.channels} vs "
                               f"{channels}); every rank must run the same program.")
    count = torch.tensor([float(s.count)], dtype=torch.float64)
    return torch.cat([count, s.mean.cpu(), s.m2.cpu()]).to(device)


def _merge_ranks(blocks: list[torch.Tensor], channels: int) -> ChannelStats | None:
    """Chan-merge the packed blocks of all ranks, in rank order."""
    total: ChannelStats | None = None
    for block in blocks:
        s = ChannelStats(int(block[0].item()), block[1:1 + channels].clone(),
                         block[1 + channels:].clone())
        total = s if total is None else total.merge(s)
    return total
