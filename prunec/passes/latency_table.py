"""Latency tables: what each prunable structure costs on a backend, at each candidate width.

A **structure** is the part of a program whose shapes depend on one channel group: the ops
that produce or carry the group's channels (its activation slots) and the ops that read the
group's parameters (producers, norms, consumers). For an MLP hidden group that is
``linear -> act -> linear``; for a conv bottleneck ``conv -> bn -> relu -> conv``. A residual
block's structure is its branch. The structure is cut out of the program as a graph of its
own (values that enter it from outside become inputs, recorded at the measurement shapes; the
values it hands on become outputs), captured again as a small :class:`Program`, pruned to
each candidate width with :func:`~prunec.rewrite.apply_plan` (keeping the first ``k`` units:
latency does not depend on which), lowered to the backend and timed.

Timings are short and interleaved: every candidate is warmed up, then ``rounds`` rounds each
time every candidate for about ``round_seconds`` after one untimed call (forward order on
even rounds, reversed on odd ones, so a neighbour's load falls on all widths alike); a width's latency is the fastest
of its rounds (:func:`undisturbed`: on a shared machine the least disturbed estimate). The
latency of the structure at width ``k`` relative to full width, ``r(k) = T(k) / T(full)``,
times the
structure's share of the dense program (:func:`measure_reference`), is what selection adds
up: ``T(plan) = T_dense (1 + sum_g share_g (r_g(k_g) - 1))``.

A structure that repeats (every layer of a transformer) has one **signature** (ops, shapes,
parameter shapes and dtypes, the group's axes): it is measured once. Tables are cached on
disk, one JSON file per (signature, candidate widths, backend and its options, software
versions, machine), under ``$PRUNEC_LATENCY_CACHE`` or ``~/.cache/prunec/latency`` (written
atomically), so a second run measures nothing.

A group whose structure cannot be cut out alone (its channels also reach values computed
from outside the structure, e.g. the residual stream) is measured on the whole program with
only that group pruned.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.fx as fx

from prunec.backends import lower
from prunec.backends.compiled import lower_program
from prunec.errors import PlanError
from prunec.ir.capture import capture
from prunec.ir.channels import ChannelGroup, analyze_channels
from prunec.ir.program import Program
from prunec.progress import bar
from prunec.rewrite import PruningPlan, apply_plan
from prunec.version import __version__

__all__ = ["MeasureSpec", "Structure", "LatencyTable", "cache_dir", "group_structure",
           "block_structure", "program_structure", "measure_tables", "measure_reference", "time_callables",
           "undisturbed", "ratio",
           "machine_id", "lower_for_timing"]

CACHE_ENV = "PRUNEC_LATENCY_CACHE"
CACHE_FORMAT = 2  # 2: every timing preceded by an untimed call

clock = time.perf_counter
"""The timer every measurement reads (tests replace it to prove a cached run times nothing)."""


@dataclass(frozen=True)
class MeasureSpec:
    """Where and how to time: the backend, its options, threads and timing effort.

    Attributes:
        backend: ``"torch"``, ``"onnxruntime"`` (``"onnx"`` is timed on ONNX Runtime),
            ``"inductor"`` or ``"tensorrt"``.
        options: Backend options (as ``prunec.compile``'s ``backend_options``).
        threads: Intra-op threads (torch: ``torch.set_num_threads`` while timing; ONNX
            Runtime: ``intra_op_threads``).
        rounds: Interleaved timing rounds per candidate (the fastest taken).
        round_seconds: About how long one candidate is timed per round.
    """

    backend: str = "torch"
    options: tuple = ()
    threads: int = 1
    rounds: int = 30
    round_seconds: float = 0.002

    def identity(self) -> dict:
        """What a cached table depends on (timing effort excluded)."""
        return {"backend": self.backend, "options": [list(kv) for kv in self.options],
                "threads": self.threads}


@dataclass
class Structure:
    """A program to time at several widths of one of its groups (or dense only).

    Attributes:
        program: The structure as a Program of its own (or the whole program).
        args: Positional inputs at the measurement shapes.
        kwargs: Keyword inputs.
        group_key: The key, in ``program``, of the group whose width varies (None: dense).
        signature: Hash of what the latency depends on (ops, shapes, dtypes, group axes).
        isolated: Whether ``program`` is a structure cut out of the model (else the model).
    """

    program: Program
    args: tuple
    kwargs: dict
    group_key: str | None
    signature: str
    isolated: bool = True


@dataclass
class LatencyTable:
    """Median latency (ms) per kept unit count of one structure, and how it was obtained."""

    signature: str
    widths: list[int]
    ms: dict[int, float]
    samples: dict[int, list[float]] = field(default_factory=dict)
    cached: bool = False
    isolated: bool = True

    def ratio(self, width: int) -> float:
        """``T(width) / T(full width)`` (see :func:`undisturbed`)."""
        return ratio(self.samples[width], self.samples[max(self.widths)])

    def to_json(self) -> dict:
        return {"format": CACHE_FORMAT, "signature": self.signature, "widths": self.widths,
                "ms": {str(k): v for k, v in self.ms.items()},
                "samples": {str(k): v for k, v in self.samples.items()},
                "isolated": self.isolated}

    @classmethod
    def from_json(cls, data: dict) -> "LatencyTable":
        def key(k: str) -> int | str:
            return int(k) if k.lstrip("-").isdigit() else k
        return cls(data["signature"], [int(w) for w in data["widths"]],
                   {key(k): float(v) for k, v in data["ms"].items()},
                   {key(k): [float(x) for x in v] for k, v in data.get("samples", {}).items()},
                   cached=True, isolated=bool(data.get("isolated", True)))


def undisturbed(samples: list[float]) -> float:
    """The latency of a computation from its timings: the fastest one.

    On a machine shared with other processes a timing is the computation plus the time it
    waited for a core; the wait is never negative, so the minimum over many short timings
    is the estimate that the load disturbs least (medians measured on the loaded 2-core
    development machine were up to 5x the minimum and swung by 2x between sessions, while
    minima agreed within a few percent).
    """
    return float(np.min(samples))


def ratio(numerator: list[float], denominator: list[float]) -> float:
    """``undisturbed(numerator) / undisturbed(denominator)``."""
    return undisturbed(numerator) / undisturbed(denominator)


# ---------------------------------------------------------------------------- machine, cache
def machine_id() -> str:
    """The CPU model, architecture and core count (a table holds for this machine only)."""
    model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return f"{platform.machine()}|{model}|{os.cpu_count()}|{gpu}"


def software_versions(backend: str) -> dict:
    """Versions of the software the latency depends on."""
    from importlib import metadata

    versions = {"prunec": __version__, "torch": torch.__version__}
    extra = {"onnxruntime": "onnxruntime", "onnx": "onnxruntime", "tensorrt": "tensorrt"}
    if backend in extra:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[extra[backend]] = metadata.version(extra[backend])
    return versions


def cache_dir() -> Path:
    """``$PRUNEC_LATENCY_CACHE``, else ``$XDG_CACHE_HOME/prunec/latency`` (``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prunec" / "latency"


def cache_key(signature: str, widths: list[int], spec: MeasureSpec) -> str:
    """The file name of a table: a hash of everything its numbers depend on."""
    identity = {"signature": signature, "widths": list(widths), **spec.identity(),
                "versions": software_versions(spec.backend), "machine": machine_id(),
                "format": CACHE_FORMAT}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def _read_cached(path: Path) -> LatencyTable | None:
    """The table at ``path``; None when absent or unreadable (it is then measured again)."""
    try:
        data = json.loads(path.read_text())
        return LatencyTable.from_json(data) if data.get("format") == CACHE_FORMAT else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    """Write beside ``path``, fsync, then rename over it: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------- structures
def _signature(program: Program, args: tuple, kwargs: dict, extra: str = "") -> str:
    """Hash of ops, argument wiring, constant arguments, tensor shapes and dtypes."""
    lines = [extra]
    for leaf in list(args) + [kwargs[k] for k in sorted(kwargs)]:
        if isinstance(leaf, torch.Tensor):
            lines.append(f"in {tuple(leaf.shape)} {leaf.dtype}")
    index = {n: i for i, n in enumerate(program.graph.nodes)}
    for node in program.graph.nodes:
        if node.op == "get_attr":
            t = program.get_tensor(node.target)
            lines.append(f"{index[node]} attr {tuple(getattr(t, 'shape', ()))} "
                         f"{getattr(t, 'dtype', type(t).__name__)}")
            continue
        wired = fx.node.map_arg((node.args, node.kwargs), lambda n: f"%{index[n]}")
        lines.append(f"{index[node]} {node.op} {node.target} {wired}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32]


def structure_nodes(program: Program, group: ChannelGroup) -> list[str]:
    """Names of the ops of ``group``'s structure, in graph order: the call nodes among its
    slots, and the call nodes that read its parameters."""
    nodes = {n.name: n for n in program.graph.nodes}
    chosen: set[str] = set()
    for slot in group.slots:
        node = nodes.get(slot.node)
        if node is None:
            continue
        if node.op == "call_function":
            chosen.add(node.name)
        elif node.op == "get_attr":
            chosen.update(u.name for u in node.users if u.op == "call_function")
    return [n.name for n in program.graph.nodes if n.name in chosen]


def external_inputs(program: Program, names: list[str]) -> list[str]:
    """Nodes outside ``names`` (not parameters) whose values the ops in ``names`` read."""
    chosen = set(names)
    nodes = {n.name: n for n in program.graph.nodes}
    found: dict[str, None] = {}
    for name in names:
        for arg in nodes[name].all_input_nodes:
            if arg.name not in chosen and arg.op != "get_attr":
                found[arg.name] = None
    return list(found)


def cut_out(program: Program, names: list[str], values: dict[str, Any]
            ) -> tuple[fx.GraphModule, tuple, dict[str, str]]:
    """The ops ``names`` as a graph module of their own.

    Values entering from outside become placeholders (``values`` holds them, recorded at
    the measurement shapes; an integer computed outside, such as a batch size read from a
    shape, is inlined as a constant). Parameters are shared, renamed ``p0, p1, ...``. Every
    op whose value is read outside the structure (or by the output) becomes an output.

    Returns:
        The module, its positional inputs and ``{original parameter name: local name}``.

    Raises:
        ValueError: a value entering the structure is neither a tensor nor a number.
    """
    chosen = set(names)
    graph, root = fx.Graph(), torch.nn.Module()
    env: dict[str, Any] = {}
    inputs: list[torch.Tensor] = []
    params: dict[str, str] = {}
    nodes = {n.name: n for n in program.graph.nodes}

    def bring(arg: fx.Node) -> Any:
        if arg.name in env:
            return env[arg.name]
        if arg.op == "get_attr":
            local = params.setdefault(arg.target, f"p{len(params)}")
            tensor = program.get_tensor(arg.target)
            if isinstance(tensor, torch.nn.Parameter):
                root.register_parameter(local, tensor)
            else:
                root.register_buffer(local, tensor)
            env[arg.name] = graph.get_attr(local)
        else:
            value = values[arg.name]
            if isinstance(value, torch.Tensor):
                inputs.append(value)
                env[arg.name] = graph.placeholder(f"x{len(inputs) - 1}")
            elif isinstance(value, (int, float, bool)):
                env[arg.name] = value
            else:
                raise ValueError(f"value '{arg.name}' entering the structure is a "
                                 f"{type(value).__name__}")
        return env[arg.name]

    outputs = []
    for name in names:
        node = nodes[name]
        if node.op != "call_function":  # parameters come in through their readers
            continue
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), bring)
        env[name] = graph.call_function(node.target, args, kwargs)
        if any(u.name not in chosen for u in node.users):
            outputs.append(env[name])
    graph.output(tuple(outputs))
    return fx.GraphModule(root, graph), tuple(inputs), params


def _recapture(gm: fx.GraphModule, inputs: tuple) -> Program:
    return capture(gm.eval(), inputs, dynamic=False)


def _local_group(sub: Program, group: ChannelGroup, params: dict[str, str]) -> str | None:
    """Key in ``sub`` of the group with ``group``'s anchor parameter axis, when that group
    is prunable there with the same units (else None: the structure does not isolate it)."""
    anchor = group.params[0] if group.params else None
    if anchor is None or anchor.param not in params:
        return None
    local = params[anchor.param]
    for g in analyze_channels(sub).groups:
        if any(s.param == local and s.axis == anchor.axis for s in g.params):
            same = g.prunable and g.size == group.size and g.step_width == group.step_width
            return g.key if same else None
    return None


def group_structure(program: Program, group: ChannelGroup, values: dict[str, Any],
                    args: tuple, kwargs: dict) -> Structure:
    """The structure of ``group``: cut out alone when possible, else the whole program."""
    names = structure_nodes(program, group)
    with contextlib.suppress(Exception):  # any failure to isolate: measure on the program
        gm, inputs, params = cut_out(program, names, values)
        sub = _recapture(gm, inputs)
        key = _local_group(sub, group, params)
        if key is not None:
            axes = sorted((s.param, s.axis) for s in analyze_channels(sub).by_key()[key].params)
            return Structure(sub, inputs, {}, key, _signature(sub, inputs, {}, f"group {axes}"))
    return Structure(program, args, kwargs, group.key,
                     _signature(program, args, kwargs, f"whole {group.key}"), isolated=False)


def block_structure(program: Program, nodes: list[str], values: dict[str, Any]) -> Structure:
    """A residual branch (``nodes``) cut out alone, timed dense (what dropping it saves)."""
    gm, inputs, _ = cut_out(program, nodes, values)
    sub = _recapture(gm, inputs)
    return Structure(sub, inputs, {}, None, _signature(sub, inputs, {}, "block"))


def program_structure(program: Program, args: tuple, kwargs: dict) -> Structure:
    """The whole program, timed dense (the reference of a latency fraction)."""
    return Structure(program, args, kwargs, None, _signature(program, args, kwargs, "program"),
                     isolated=False)


# ---------------------------------------------------------------------------- timing
@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block; the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def lower_for_timing(program: Program, spec: MeasureSpec) -> Callable[..., Any]:
    """A callable running ``program`` on the backend (torch: the graph module itself, the
    same ATen graph the torch artifact runs, without the cost of re-exporting it; ONNX
    Runtime: the exported program, or for a program from an ``.onnx`` file that file with
    the program's plans written back, as ``compile`` delivers it; inductor:
    the artifact ``compile`` would give, compiled by TorchInductor (C++ on CPU) on its
    first call, which :func:`time_callables`' warm-up makes)."""

    options = dict(spec.options)
    if spec.backend == "torch":
        gm = program.gm
        return gm
    if spec.backend in ("onnxruntime", "onnx"):
        options.setdefault("intra_op_threads", spec.threads)
        options.setdefault("check", False)
        # Spinning workers of one session steal the cores of the next one timed after it:
        # timings interleave many sessions, so spinning is off unless asked for.
        options.setdefault("spinning", False)
        # As compile lowers: a program from the user's .onnx file is timed as that file with
        # the plan written back (opaque nodes included), not as a re-export.
        return lower_program(program, "onnxruntime", options)
    if spec.backend == "inductor":
        # Inductor's C++ kernels take their OpenMP thread count when they are generated:
        # whatever compiles here (aot=True, check=True) compiles at the target's threads;
        # the lazy artifact compiles on its first call, inside the timing's threads.
        with torch_threads(spec.threads):
            return lower(program, "inductor", **options)
    return lower(program, spec.backend, **options)


def time_callables(fns: dict[Any, Callable[[], Any]], *, rounds: int, round_seconds: float
                   ) -> dict[Any, list[float]]:
    """Per callable, ``rounds`` timings (ms per call), interleaved.

    Each callable is warmed up twice; the number of calls per timing is set once, from the
    slowest callable's warm-up, so that one timing lasts about ``round_seconds``. Rounds
    alternate forward and reversed order; every timing follows one untimed call of the same
    callable (steady state, caches holding its weights, whatever its place in the order).
    """
    keys = list(fns)
    slowest = 0.0
    for key in keys:
        fns[key]()
        start = clock()
        fns[key]()
        slowest = max(slowest, clock() - start)
    calls = int(min(max(round_seconds / max(slowest, 1e-7), 1), 1000))
    samples: dict[Any, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        for key in keys if r % 2 == 0 else reversed(keys):
            fn = fns[key]
            # One untimed call first: the timed calls then find this program's weights and
            # buffers in cache, as when it runs alone, whatever ran before it. Without it
            # the callable at either end of the order ran twice in a row every other round
            # (forward, then reversed) and its fastest call was warm where the others' were
            # not (ONNX Runtime, the 7 ms Llama-shaped decoder: the same program lowered
            # twice timed 5 % apart by position alone).
            fn()
            start = clock()
            for _ in range(calls):
                fn()
            samples[key].append((clock() - start) / calls * 1e3)
    return samples


def _bound(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Callable[[], Any]:
    def call() -> Any:
        with torch.no_grad():
            return fn(*args, **kwargs)
    return call


def _measure(structure: Structure, widths: list[int], spec: MeasureSpec) -> LatencyTable:
    """Lower ``structure`` at every width and time them interleaved."""

    fns = {}
    for width in widths:
        program = structure.program
        if structure.group_key is not None and width < max(widths):
            program = program.clone(share_tensors=True)
            apply_plan(program, PruningPlan({structure.group_key: list(range(width))}))
        fns[width] = _bound(lower_for_timing(program, spec), structure.args, structure.kwargs)
    with _threads_for(spec):
        samples = time_callables(fns, rounds=spec.rounds, round_seconds=spec.round_seconds)
    return LatencyTable(structure.signature, list(widths),
                        {w: undisturbed(s) for w, s in samples.items()}, samples,
                        isolated=structure.isolated)


def measure_tables(requests: list[tuple[Structure, list[int]]], spec: MeasureSpec, *,
                   progress: bool | None = None, use_cache: bool = True) -> list[LatencyTable]:
    """A table per request, each distinct (signature, widths) measured once, cached on disk.

    Returns:
        One :class:`LatencyTable` per request, in order (repeated structures share one).
    """

    first: dict[tuple, Structure] = {}
    for structure, widths in requests:
        first.setdefault((structure.signature, tuple(widths)), structure)
    done: dict[tuple, LatencyTable] = {}
    with bar(total=len(first), desc=f"latency tables ({spec.backend})", unit="structure",
             progress=progress) as shown:
        for (signature, widths), structure in first.items():
            done[(signature, widths)] = _cached(
                cache_key(signature, list(widths), spec), use_cache,
                lambda s=structure, w=list(widths): _measure(s, w, spec))
            shown.update(1)
    return [done[(s.signature, tuple(w))] for s, w in requests]


def measure_reference(program: Structure, parts: list[Structure], spec: MeasureSpec, *,
                      use_cache: bool = True, lowered: dict | None = None) -> dict[str, float]:
    """The dense program and other programs (variants of it with a structure pruned, or
    parts of it timed alone) timed together, interleaved:
    ``{"program": ms, signature: T_part / T_program, ..., "cached": bool}`` (see
    :func:`undisturbed`). ``lowered`` (signature -> callable), when given, keeps the
    lowered reference program for the next call (the closed loop times the dense program again with
    every plan it measures, and lowering costs more than timing).

    Tables measured apart are taken under whatever load the machine had then; expressing
    each table as ratios to its full width and scaling it by ratios measured here, in one
    session, keeps ``T_dense + sum deltas`` consistent under a load that varies between
    sessions.
    """
    distinct = list({p.signature: p for p in parts}.values())
    signature = hashlib.sha256(" ".join([program.signature] + sorted(
        p.signature for p in distinct)).encode()).hexdigest()[:32]

    memo = {} if lowered is None else lowered

    def measure() -> LatencyTable:
        if program.signature not in memo:  # only the reference is kept: parts are many
            memo[program.signature] = _bound(lower_for_timing(program.program, spec),
                                             program.args, program.kwargs)
        fns = {"program": memo[program.signature]}
        for part in distinct:
            fns[f"s:{part.signature}"] = _bound(lower_for_timing(part.program, spec),
                                                part.args, part.kwargs)
        with _threads_for(spec):
            samples = time_callables(fns, rounds=spec.rounds, round_seconds=spec.round_seconds)
        return LatencyTable(signature, [], {}, {k: v for k, v in samples.items()})

    table = _cached(cache_key(signature, [-1], spec), use_cache, measure)
    whole = table.samples["program"]
    found: dict[str, Any] = {k.removeprefix("s:"): ratio(v, whole)
                             for k, v in table.samples.items() if k != "program"}
    found["program"] = undisturbed(whole)
    found["cached"] = table.cached
    return found


def _cached(key: str, use_cache: bool, measure: Callable[[], LatencyTable]) -> LatencyTable:
    path = cache_dir() / f"{key}.json"
    table = _read_cached(path) if use_cache else None
    if table is None:
        table = measure()
        if use_cache:
            _write_atomic(path, json.dumps(table.to_json()))
    return table


def _threads_for(spec: MeasureSpec) -> contextlib.AbstractContextManager:
    return torch_threads(spec.threads) if spec.backend in ("torch", "inductor") \
        else contextlib.nullcontext()


def candidate_widths(size: int, step: int, max_widths: int) -> list[int]:
    """Kept unit counts to measure: the multiples of ``step`` below ``size`` and ``size``,
    thinned evenly to at most ``max_widths`` (the smallest and full widths always kept)."""
    allowed = [k for k in range(step, size, step)] + [size]
    if len(allowed) <= max_widths:
        return allowed
    picks = np.unique(np.round(np.linspace(0, len(allowed) - 1, max_widths)).astype(int))
    return [allowed[i] for i in picks]


def check_reachable(best_ms: float, dense_ms: float, target_ms: float, where: str, *,
                    measured: bool = False) -> None:
    """Raise when even the fastest choice is slower than the target (``measured``: the
    fastest plan was built and timed, else priced by the tables)."""
    how = ("the fastest plan built and timed against the dense program" if measured
           else "every candidate at its smallest measured latency")
    if best_ms > target_ms + 1e-12:
        raise PlanError(
            f"{where}: the latency target {target_ms / dense_ms:.0%} of the dense "
            f"{dense_ms:.3f} ms ({target_ms:.3f} ms) cannot be met: the best reachable is "
            f"{best_ms:.3f} ms ({best_ms / dense_ms:.0%}) with {how}. Ask for at least "
            f"{math.ceil(best_ms / dense_ms * 100)} %, or let pruning reach more of the model "
            f"(targets='all' for a width pass, depth pruning).")
