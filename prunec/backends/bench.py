"""Benchmark harness: interleaved latency of several artifacts, with MACs-based efficiency.

Artifacts run in the same process, interleaved: every iteration calls each artifact once,
in list order on even iterations and reversed order on odd ones, so that slow drifts of a
noisy machine (thermal throttling, a neighbour's job) fall on all artifacts alike and the
position in the round carries no bias. CUDA is synchronised before and after each timed
call when the inputs live on a GPU.

Per artifact and batch size the result holds latency median, p90, p95, p99, min, max, mean
(ms, percentiles linearly interpolated) and throughput ``batch / median`` (samples/s).
Against a baseline ``b`` (the first artifact unless given), for artifact ``x``:

- ``speedup = median_b / median_x`` (same batch size);
- ``ideal_speedup = macs_b / macs_x`` (what removing MACs alone would give);
- ``efficiency = speedup / ideal_speedup`` (1.0: latency fell exactly as MACs did);
- ``speedup_ci95``: a 95% bootstrap interval of the speedup, resampling interleaved rounds
  as pairs (round ``i`` of both artifacts ran back to back and shares its load).

**Noise.** :attr:`BenchResult.warnings` says, in words, when a measured difference is not
to be trusted: when the speedup's interval contains 1 (the difference is within timer
noise) or is wider than the difference itself, and when the slowest calls are many times
the median (another process competed for the machine).

**Time budget.** With ``iters=None`` the number of timed rounds follows ``time_budget``
(seconds per batch size): the warm-up rounds are timed and the rest of the budget is
divided by their mean, clamped to ``[min_iters, max_iters]``.

Artifact names may be ``"variant/backend"`` (``"dense/torch"``, ``"pruned50/onnxruntime"``):
:meth:`BenchResult.plot` draws one line per backend through its variants' (MACs, latency).
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.utils._pytree as pytree

from prunec.errors import PrunecError
from prunec.fileio import atomic_write_text
from prunec.progress import bar
from prunec.report import format_count

__all__ = ["benchmark", "BenchResult", "LatencyStats", "environment", "summarize",
           "interleaved_order", "paired_speedup_ci", "noise_warnings"]

InputsFn = Callable[[int], "tuple[tuple, dict]"]


@dataclass
class LatencyStats:
    """Timing of one artifact at one batch size (latencies in milliseconds)."""

    artifact: str
    batch_size: int
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float
    throughput: float
    samples_ms: list[float] = field(repr=False, default_factory=list)
    macs: float | None = None
    speedup: float | None = None
    ideal_speedup: float | None = None
    efficiency: float | None = None
    speedup_ci95: tuple[float, float] | None = None


def summarize(artifact: str, batch_size: int, seconds: list[float]) -> LatencyStats:
    """Statistics of timed calls (``seconds`` per call) at ``batch_size`` samples a call."""
    if not seconds:
        raise PrunecError(f"No timed calls for {artifact!r}; iters must be >= 1.")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p90, p95, p99 = (float(v) for v in np.percentile(ms, [90, 95, 99]))
    median = float(np.median(ms))
    return LatencyStats(
        artifact=artifact, batch_size=batch_size, median_ms=median, p90_ms=p90, p95_ms=p95,
        p99_ms=p99, min_ms=float(ms.min()), max_ms=float(ms.max()), mean_ms=float(ms.mean()),
        throughput=batch_size / (median / 1e3) if median > 0 else float("inf"),
        samples_ms=[float(v) for v in ms])


def interleaved_order(names: list[str], iteration: int) -> list[str]:
    """Names in order on even iterations, reversed on odd ones."""
    return list(names) if iteration % 2 == 0 else list(reversed(names))


@dataclass
class BenchResult:
    """Every artifact's :class:`LatencyStats` per batch size, plus the environment."""

    rows: list[LatencyStats]
    environment: dict
    settings: dict
    baseline: str | None = None
    warnings: list[str] = field(default_factory=list)

    def row(self, artifact: str, batch_size: int) -> LatencyStats:
        """The statistics of ``artifact`` at ``batch_size``."""
        for r in self.rows:
            if r.artifact == artifact and r.batch_size == batch_size:
                return r
        raise KeyError((artifact, batch_size))

    def to_dict(self) -> dict:
        return {"baseline": self.baseline, "settings": self.settings,
                "environment": self.environment, "warnings": list(self.warnings),
                "rows": [asdict(r) for r in self.rows]}

    def to_json(self, path: str | Path) -> Path:
        """Write everything (raw samples included) as JSON."""

        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    def to_markdown(self, *, warnings: bool = True) -> str:
        """A Markdown table, one row per artifact and batch size; then the warnings, if
        any, one per line."""
        head = ["artifact", "batch", "median ms", "p90 ms", "p95 ms", "p99 ms", "min ms",
                "max ms", "samples/s", "MACs", "speedup", "speedup 95% CI", "ideal",
                "efficiency"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            ci = "-" if r.speedup_ci95 is None else \
                f"{r.speedup_ci95[0]:.2f}-{r.speedup_ci95[1]:.2f}"
            cells = [r.artifact, str(r.batch_size), *(_fmt(v) for v in (
                r.median_ms, r.p90_ms, r.p95_ms, r.p99_ms, r.min_ms, r.max_ms)),
                _fmt(r.throughput, ".1f"), _fmt_macs(r.macs), _fmt(r.speedup, ".2f"), ci,
                _fmt(r.ideal_speedup, ".2f"), _fmt(r.efficiency, ".2f")]
            lines.append("| " + " | ".join(cells) + " |")
        if warnings and self.warnings:
            lines += [""] + [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """PNG of median latency vs MACs, one panel per batch size, one line per backend
        (the part of each artifact name after ``/``). Needs matplotlib and MACs."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as exc:
            raise PrunecError("BenchResult.plot needs matplotlib: pip install matplotlib") from exc
        rows = [r for r in self.rows if r.macs is not None]
        if not rows:
            raise PrunecError("Nothing to plot: pass macs={name: MACs} to benchmark().")
        batches = sorted({r.batch_size for r in rows})
        fig = Figure(figsize=(5 * len(batches), 4), layout="constrained")
        FigureCanvasAgg(fig)
        for i, batch in enumerate(batches):
            _plot_panel(fig.add_subplot(1, len(batches), i + 1), batch,
                        [r for r in rows if r.batch_size == batch])
        path = Path(path)
        fig.savefig(path, format="png", dpi=120)
        return path


def _plot_panel(ax: Any, batch: int, rows: list[LatencyStats]) -> None:
    groups: dict[str, list[LatencyStats]] = {}
    for r in rows:
        groups.setdefault(r.artifact.rpartition("/")[2], []).append(r)
    for backend, members in groups.items():
        members.sort(key=lambda r: r.macs)
        ax.plot([r.macs / 1e6 for r in members], [r.median_ms for r in members], "o-",
                label=backend)
        for r in members:
            ax.annotate(r.artifact.rpartition("/")[0] or r.artifact,
                        (r.macs / 1e6, r.median_ms), fontsize=7)
    ax.set(title=f"batch {batch}", xlabel="MMACs per sample", ylabel="median latency (ms)")
    ax.grid(alpha=0.3)
    # Legend outside the axes (right of the panel) so it never covers a point.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              frameon=False)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _fmt_macs(macs: float | None) -> str:
    return "-" if macs is None else format_count(macs)


def benchmark(artifacts: dict[str, Callable[..., Any]], make_inputs: InputsFn,
              batch_sizes: Iterable[int] = (1, 8), *, warmup: int = 10, iters: int | None = 50,
              time_budget: float = 10.0, min_iters: int = 20, max_iters: int = 5000,
              timer: Callable[[], float] = time.perf_counter,
              macs: dict[str, float] | None = None, baseline: str | None = None,
              synchronize: Callable[[], None] | None = None,
              progress: bool | None = None) -> BenchResult:
    """Time ``artifacts`` interleaved, per batch size (see the module docstring).

    Args:
        artifacts: Name -> callable taking the model's inputs (artifacts, modules...).
        make_inputs: ``batch_size -> (args, kwargs)``; called once per batch size and the
            same inputs are fed to every artifact.
        batch_sizes: Batch sizes to measure.
        warmup: Untimed interleaved rounds before timing (compilation, caches); at least
            one when ``iters`` is None (they size the budget).
        iters: Timed interleaved rounds; None: as many as ``time_budget`` allows.
        time_budget: Seconds of timed rounds per batch size when ``iters`` is None.
        min_iters: Fewest timed rounds under a budget (a bootstrap needs some).
        max_iters: Most timed rounds under a budget.
        timer: Clock in seconds (tests pass a fake one).
        macs: Name -> MACs per sample, for ``ideal_speedup`` and ``efficiency``.
        baseline: Name the speedups are relative to (default: the first artifact).
        synchronize: Called before and after each timed call; by default
            ``torch.cuda.synchronize`` when an input tensor is on CUDA, else nothing.
        progress: Show a bar of the rounds (see :mod:`prunec.progress`; default: when
            standard error is a terminal).
    """
    names = list(artifacts)
    if not names:
        raise PrunecError("benchmark() needs at least one artifact.")
    baseline = names[0] if baseline is None else baseline
    if baseline not in artifacts:
        raise PrunecError(f"Baseline {baseline!r} is not among the artifacts {names}.")
    if iters is not None and iters < 1:
        raise PrunecError(f"benchmark(): iters must be >= 1 or None (time budget), got {iters}.")
    if iters is None and not time_budget > 0:
        raise PrunecError(f"benchmark(): time_budget must be > 0 seconds, got {time_budget}.")
    batch_sizes = list(batch_sizes)
    rows, used, warnings = [], {}, []
    for batch in batch_sizes:
        args, kwargs = make_inputs(batch)
        loop = _Rounds(artifacts, args, kwargs, timer, synchronize or _default_sync(args, kwargs))
        times, used[batch] = loop.run(batch, warmup, iters, time_budget, min_iters, max_iters,
                                      progress)
        batch_rows = [summarize(n, batch, times[n]) for n in names]
        _add_ratios(batch_rows, baseline, macs or {})
        warnings += noise_warnings(batch_rows, baseline)
        rows.extend(batch_rows)
    settings = {"batch_sizes": batch_sizes, "warmup": warmup,
                "iters": iters if iters is not None else used,
                "time_budget_s": None if iters is not None else time_budget,
                "interleaved": True, "timer": getattr(timer, "__name__", repr(timer)),
                "artifacts": {n: _describe(fn) for n, fn in artifacts.items()}}
    return BenchResult(rows=rows, environment=environment(), settings=settings,
                       baseline=baseline, warnings=warnings)


class _Rounds:
    """Interleaved rounds of calls: every artifact once per round, order alternating."""

    def __init__(self, artifacts: dict[str, Callable[..., Any]], args: tuple, kwargs: dict,
                 timer: Callable[[], float], sync: Callable[[], None]) -> None:
        self.artifacts, self.args, self.kwargs = artifacts, args, kwargs
        self.timer, self.sync = timer, sync
        self.names = list(artifacts)

    def run(self, batch: int, warmup: int, iters: int | None, budget: float, min_iters: int,
            max_iters: int, progress: bool | None) -> tuple[dict[str, list[float]], int]:
        warmup = max(warmup, 1) if iters is None else warmup
        with bar(total=warmup + (iters or 0), desc=f"timing batch {batch}", unit="round",
                 progress=progress) as shown:
            spent = 0.0
            for i in range(warmup):
                spent += self._round(i)
                shown.update(1)
            if iters is None:
                per_round = spent / max(warmup, 1)
                iters = int(min(max(budget / max(per_round, 1e-9), min_iters), max_iters))
                shown.total = warmup + iters
                shown.refresh()
            times: dict[str, list[float]] = {n: [] for n in self.names}
            for i in range(iters):
                self._round(i, times)
                shown.update(1)
        return times, iters

    def _round(self, i: int, times: dict[str, list[float]] | None = None) -> float:
        """One round; records each call's seconds into ``times`` when given. Returns the
        round's total seconds."""
        total = 0.0
        for name in interleaved_order(self.names, i):
            self.sync()
            start = self.timer()
            self.artifacts[name](*self.args, **self.kwargs)
            self.sync()
            seconds = self.timer() - start
            total += seconds
            if times is not None:
                times[name].append(seconds)
        return total


def paired_speedup_ci(base_ms: list[float], ms: list[float], reps: int = 2000,
                      seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of ``median(base) / median(x)``, resampling interleaved rounds
    as pairs (round ``i`` of both artifacts ran back to back, so they share its load)."""
    base, x = np.asarray(base_ms, dtype=np.float64), np.asarray(ms, dtype=np.float64)
    n = min(len(base), len(x))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(reps, n))
    ratios = np.median(base[:n][idx], axis=1) / np.maximum(np.median(x[:n][idx], axis=1), 1e-12)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)


def noise_warnings(rows: list[LatencyStats], baseline: str, *, tail: float = 5.0,
                   spread: float = 2.0) -> list[str]:
    """Sentences for a person when timings of one batch size cannot carry a conclusion.

    - the speedup's 95% interval contains 1: the difference is within timer noise;
    - the interval is wider than the distance of the speedup from 1: noise is as large as
      the difference measured;
    - the median above ``spread`` times the fastest call, or p99 above ``tail`` times the
      median: other work competed for the machine;
    - a speedup whose whole interval is below 1 although the artifact has fewer MACs: fixed
      per-call costs or the machine's load dominate the measurement.
    """
    base = next(r for r in rows if r.artifact == baseline)
    out = []
    for r in rows:
        where = f"{r.artifact} at batch {r.batch_size}"
        if r.median_ms > spread * r.min_ms:
            out.append(f"{where}: calls varied widely (fastest {r.min_ms:.3g} ms, median "
                       f"{r.median_ms:.3g} ms): the machine was busy; the numbers describe "
                       f"the load more than the model.")
        elif r.p99_ms > tail * r.median_ms:
            out.append(f"{where}: the slowest 1% of calls took {r.p99_ms:.3g} ms against a "
                       f"median of {r.median_ms:.3g} ms; other work competed for the machine, "
                       f"so rerun on a quieter one for stable numbers.")
        if r is base or r.speedup is None or len(r.samples_ms) < 2:
            continue
        lo, hi = r.speedup_ci95 = paired_speedup_ci(base.samples_ms, r.samples_ms)
        if lo <= 1.0 <= hi:
            out.append(f"{where}: the speedup {r.speedup:.2f}x is within timer noise (95% "
                       f"interval {lo:.2f}-{hi:.2f}x contains 1); at {base.median_ms:.3g} ms a "
                       f"call the model may be too small to time: try larger batch sizes or "
                       f"more iterations.")
        elif (hi - lo) / 2 > abs(r.speedup - 1.0):
            out.append(f"{where}: timer noise (95% interval {lo:.2f}-{hi:.2f}x) is as large "
                       f"as the difference measured ({r.speedup:.2f}x); use more iterations.")
        if hi < 1.0 and (r.ideal_speedup or 0) > 1.0:
            other = "" if r.artifact.endswith("onnxruntime") else " or the onnxruntime backend"
            out.append(f"{where}: measured slower than {baseline} ({r.speedup:.2f}x) although "
                       f"it has {r.ideal_speedup:.2f}x fewer MACs: at {base.median_ms:.3g} ms a "
                       f"call, fixed per-call costs (Python, op dispatch) or a busy machine "
                       f"dominate; try larger batch sizes{other}.")
    return out


def _add_ratios(rows: list[LatencyStats], baseline: str, macs: dict[str, float]) -> None:
    base = next(r for r in rows if r.artifact == baseline)
    for r in rows:
        r.macs = macs.get(r.artifact)
        r.speedup = base.median_ms / r.median_ms if r.median_ms > 0 else None
        if r.macs and macs.get(baseline):
            r.ideal_speedup = macs[baseline] / r.macs
            r.efficiency = r.speedup / r.ideal_speedup if r.speedup is not None else None


def _default_sync(args: tuple, kwargs: dict) -> Callable[[], None]:
    leaves = pytree.tree_leaves((args, kwargs))
    if any(isinstance(x, torch.Tensor) and x.is_cuda for x in leaves):
        return torch.cuda.synchronize
    return lambda: None


def _describe(fn: Any) -> dict:
    return {"backend": getattr(fn, "name", type(fn).__name__),
            "settings": _jsonable(getattr(fn, "settings", None))}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def environment() -> dict:
    """Where the numbers were taken: hardware, software versions, threads."""
    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.version.cuda if cuda else None,
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {p: _version(p) for p in (
            "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy")},
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
