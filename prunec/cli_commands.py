"""The work behind ``prunec prune``, ``prunec analyze`` and ``prunec bench``.

Each command checks its options first (:func:`load_setup`: specs resolve, backend installed,
output usable), then builds the model and its data, then works. Results go to standard
output, status and progress to standard error (:mod:`prunec.progress`).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import torch

import prunec
from prunec import passes, progress
from prunec.backends.bench import benchmark
from prunec.backends.onnx_original import ORIGINAL_BACKENDS, OriginalOnnxArtifact
from prunec.fileio import atomic_write_text
from prunec.errors import PrunecError
from prunec.cli_hf import check_hf_dir, copy_tokenizer, is_hf_spec, load_hf_model, make_llm_pass, \
    restore_use_cache
from prunec.cli_specs import (
    BUILTIN, BUILTIN_NAME, CliError, calibration_items, call_user, check_backend,
    load_factory_model, parse_input, resolve_callable, version_text,
)
from prunec.frontends.onnx import graph_inputs, load_model
from prunec.report import batch_size_of
from prunec.rewrite.plan import plans_from_metadata
from prunec.train import finetune
from prunec.zoo import default_model, digits_data, evaluate

__all__ = ["Setup", "load_setup", "make_pass", "compile_model", "save_output", "cmd_prune",
           "cmd_analyze", "cmd_bench"]

# ---------------------------------------------------------------------------- the model
@dataclass
class Setup:
    """What a command works on: the model, its example inputs, data, and names."""

    spec: str
    model: torch.nn.Module
    args: tuple
    kwargs: dict
    name: str
    train_data: list | None = None
    calibration: list | None = None
    evaluate: Any = None  # module -> accuracy in [0, 1], for the built-in model
    notes: list = field(default_factory=list)

    @property
    def builtin(self) -> bool:
        return self.spec == BUILTIN


def _check_options(args: argparse.Namespace) -> tuple[Any, Any]:
    """Everything that can be checked before work: specs resolve, backend installed,
    output writable. Returns the resolved factory and data functions."""
    factory = None if args.model == BUILTIN or is_hf_spec(args.model) else \
        resolve_callable(args.model, "--model")
    if is_hf_spec(args.model):
        check_hf_dir(args.model)
    data_fn = resolve_callable(args.data, "--data") if args.data else None
    args.inputs = args.inputs or []
    if args.model == BUILTIN and args.inputs:
        raise CliError("--input applies to --model module:factory; the built-in model takes "
                       "8x8 digit images")
    _check_backend_and_outputs(args)
    epochs = getattr(args, "finetune_epochs", None)
    if epochs and args.model != BUILTIN and data_fn is None:
        raise CliError("--finetune-epochs needs training data for a factory model: give "
                       "--data module:function returning (inputs, target) batches")
    return factory, data_fn


def _check_backend_and_outputs(args: argparse.Namespace) -> None:
    """The backend is installed and ``--output`` / ``--json`` can be written."""
    if getattr(args, "backend", None):
        check_backend(args.backend)
    output = getattr(args, "output", None)
    if output and not getattr(args, "no_save", False):
        check_output_dir(output, "--output")
    if getattr(args, "json", None):
        check_output_file(args.json, "--json")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output_dir(value: str, option: str) -> None:
    """A directory the command can create or write into (checked before any work)."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise CliError(f"{option} {value}: exists and is not a directory")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise CliError(f"{option} {value}: {existing} is a file, so no directory can be "
                       f"made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CliError(f"{option} {value}: {existing} is not writable (permission denied)")


def check_output_file(value: str, option: str) -> None:
    """A file the command can write: its directory exists and is writable."""
    path = Path(value)
    if path.is_dir():
        raise CliError(f"{option} {value}: is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise CliError(f"{option} {value}: the directory {parent} does not exist "
                       f"(create it first)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"{option} {value}: the directory {parent} is not writable "
                       f"(permission denied)")


def load_setup(args: argparse.Namespace) -> Setup:
    """Check the options, then build the model, its inputs and its data."""
    if str(args.model).lower().endswith(".onnx"):  # ONNX in, ONNX out
        return _onnx_setup(args)
    factory, data_fn = _check_options(args)
    if is_hf_spec(args.model):
        with progress.step(f"loading the model ({args.model})"):
            model, inputs, kwargs, use_cache = load_hf_model(args.model, args.inputs)
        setup = Setup(args.model, model, inputs, kwargs, type(model).__name__)
        setup.use_cache = use_cache
    elif factory is None:
        setup = _builtin_setup()
    else:
        with progress.step(f"building the model ({args.model})"):
            model, inputs, kwargs = load_factory_model(factory, args.model, args.inputs)
        setup = Setup(args.model, model, inputs, kwargs, type(model).__name__)
    if data_fn is not None:
        batches = call_user(data_fn, args.data, "--data")
        batches = list(batches)
        setup.calibration = calibration_items(batches)
        setup.train_data = batches
        if is_hf_spec(args.model) and not args.inputs and isinstance(setup.calibration[0], dict):
            setup.args, setup.kwargs = (), dict(setup.calibration[0])  # capture as data come
    return setup


def _onnx_setup(args: argparse.Namespace) -> Setup:
    """An ``.onnx`` file with ``--input NAME:DTYPE:SHAPE`` per graph input (feeds by name:
    integers are ones, floats random); the backend defaults to onnxruntime."""

    # --data on the command line is the user's own opt-in to import it, as for a factory
    data_fn = resolve_callable(args.data, "--data") if args.data else None
    if getattr(args, "backend", "torch") == "torch":
        args.backend = "onnxruntime"
    if args.backend not in ORIGINAL_BACKENDS:
        raise CliError(f"--backend {args.backend}: an .onnx model comes back as its own "
                       f"file, lowered to one of {', '.join(ORIGINAL_BACKENDS)}")
    for flag, given in (("--static", getattr(args, "static", False)),
                        ("--batch-only", getattr(args, "batch_only", False))):
        if given:
            raise CliError(f"{flag} applies to PyTorch models: an .onnx file keeps the "
                           f"dynamic axes its graph declares; drop {flag}")
    _check_backend_and_outputs(args)  # before any work, as for a PyTorch model
    model, _, _ = load_model(args.model)
    names = [i.name for i in graph_inputs(model)]
    specs = list(args.inputs or [])
    if len(specs) == 1 and specs[0].name is None and len(names) == 1:
        specs[0] = dataclasses.replace(specs[0], name=names[0])
    given = [s.name for s in specs]
    if sorted(n for n in given if n) != sorted(names) or None in given:
        raise CliError(f"{args.model} has graph inputs {names}: give --input NAME:DTYPE:SHAPE "
                       f"for each (e.g. --input {names[0] if names else 'x'}:int64:1x128)")
    generator = torch.Generator().manual_seed(0)
    feeds = {s.name: s.make(generator) for s in specs}
    args.inputs = specs
    setup = Setup(args.model, args.model, feeds, {}, Path(args.model).name)
    if data_fn is not None:  # (inputs, target) pairs or dicts, as for a factory model
        setup.calibration = _onnx_calibration(
            calibration_items(list(call_user(data_fn, args.data, "--data"))), names)
    return setup


def _onnx_calibration(items: list, names: list[str]) -> list:
    """Calibration inputs for a graph with inputs ``names``: a dict by graph-input name
    (every name), a tuple in graph-input order, or one tensor for a one-input graph; each
    becomes a dict by name (the frontend's form). Anything else: a one-line error."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            if sorted(item) != sorted(names):
                raise CliError(f"--data batch {i}: its inputs {sorted(item)} are not the graph "
                               f"inputs {names}")
            out.append({n: item[n] for n in names})
            continue
        values = tuple(item) if isinstance(item, (tuple, list)) else (item,)
        if len(values) != len(names):
            raise CliError(f"--data batch {i}: {len(values)} input(s) for the graph inputs "
                           f"{names}; give a tuple in that order or a dict by name")
        out.append(dict(zip(names, values)))
    return out


def _builtin_setup() -> Setup:
    with progress.step("training the built-in digits classifier (first use)"):
        model, inputs = default_model()
    x_train, y_train, x_test, y_test = digits_data()
    return Setup(BUILTIN, model, inputs, {}, "digits ResNet-14 (built-in)",
                 train_data=list(zip(x_train.split(32), y_train.split(32))),
                 calibration=[(x,) for x in x_train.split(64)],
                 evaluate=lambda m: evaluate(m, x_test, y_test))


def make_pass(args: argparse.Namespace, setup: Setup):
    """The pass the options describe, with the API's defaults for what is not given."""

    targets = args.targets or ("mlp" if args.pass_name == "variance" else "all")
    common = dict(targets=targets, round_to=args.round_to, scope=args.scope)
    latency = getattr(args, "latency", None)
    if latency is not None:  # --latency replaces --ratio (timed on --backend by compile)
        common["latency"] = latency
    amount = None if latency is not None else args.ratio
    if args.pass_name in ("heads", "depth"):
        return make_llm_pass(args, setup.calibration)
    if args.pass_name == "magnitude":
        return passes.MagnitudePruning(amount, **common)
    if args.pass_name == "random":
        return passes.RandomPruning(amount, **common)
    calibration = setup.calibration
    if calibration is None:
        if setup.args and setup.kwargs:  # a calibration item is a tensor, tuple or dict
            raise CliError("--pass variance on a model with positional and keyword inputs "
                           "needs --data: calibration items are a tuple of positional inputs "
                           "or a dict of keyword inputs")
        calibration = [setup.kwargs] if setup.kwargs else [setup.args]
        setup.notes.append("variance statistics come from the example inputs only; give "
                           "--data for real calibration batches")
    # progress=None: the calibration bar follows prunec.progress (--quiet, a terminal)
    if getattr(args, "no_compensate", False):
        common["compensate"] = False
    return passes.VarianceBasedPruning(amount, calibration, **common)


def capture_dynamic(args: argparse.Namespace):
    """The ``dynamic`` argument of capture from ``--static`` / ``--batch-only``."""
    if args.static:
        return False
    return "batch" if getattr(args, "batch_only", False) else True


def compile_model(args: argparse.Namespace, setup: Setup, passes: list, *, plans=None,
                  backend: str | None = None):
    """``prunec.compile`` with the command line's capture options."""

    backend = backend or args.backend
    options: dict = dict(example_kwargs=setup.kwargs or None, backend=backend,
                         dynamic=capture_dynamic(args))
    if getattr(args, "threads", None) and backend == "onnxruntime":  # torch's are set by main
        options["backend_options"] = {"intra_op_threads": args.threads}
    if plans is not None:
        options["plans"] = plans
    return prunec.compile(setup.model, setup.args, passes, **options)


# ---------------------------------------------------------------------------- prune
def _estimate_seconds(builtin: bool, epochs: int, pass_name: str) -> float | None:
    """Rough wall time of the built-in job on two busy CPU cores (measured), else None."""
    if not builtin:
        return None
    return 20.0 + (4.0 if pass_name == "variance" else 1.0) + 8.0 * epochs


def _announce(args: argparse.Namespace, name: str, epochs: int) -> None:
    what = {"variance": "variance-based pruning", "magnitude": "magnitude pruning",
            "random": "random pruning", "heads": "head pruning",
            "depth": "depth pruning"}[args.pass_name]
    targets = args.targets or ("mlp" if args.pass_name == "variance" else "all")
    unit = "MLP neurons and conv bottleneck channels" if targets == "mlp" else "prunable channels"
    unit = {"heads": "attention heads", "depth": f"{getattr(args, 'unit', 'block')}s"}.get(
        args.pass_name, unit)
    tune = f", then {epochs} epoch{'s' * (epochs != 1)} of distillation" if epochs else ""
    estimate = _estimate_seconds(args.model == BUILTIN, epochs, args.pass_name)
    took = f"; about {progress.format_seconds(estimate)}" if estimate else ""
    amount = f"of {args.ratio:.0%} of its {unit}" if getattr(args, "latency", None) is None \
        else f"of its {unit} to {args.latency:.0%} of its latency on {args.backend}"
    message = f"prunec: pruning {name}: {what} {amount}{tune}{took}."
    progress.log.info("%s", message)
    if not args.quiet:  # on standard output: part of what the run did, even when piped
        print(message, flush=True)


def cmd_prune(args: argparse.Namespace) -> int:
    is_builtin = args.model == BUILTIN
    is_onnx = str(args.model).lower().endswith(".onnx")  # --data only calibrates: no training
    if is_onnx and args.finetune_epochs:
        raise CliError("--finetune-epochs does not apply to an .onnx model (prunec cannot "
                       "train an ONNX graph); --data gives calibration batches only")
    if is_onnx and args.backend == "torch":  # the default: an .onnx file runs on ONNX Runtime
        args.backend = "onnxruntime"
    epochs = args.finetune_epochs if args.finetune_epochs is not None else \
        (3 if is_builtin or (args.data and not is_onnx) else 0)
    _announce(args, BUILTIN_NAME if is_builtin else args.model, epochs)
    start = time.perf_counter()
    setup = load_setup(args)
    pass_ = make_pass(args, setup)
    with progress.step(f"capturing, pruning and lowering to {args.backend}"):
        compiled = compile_model(args, setup, [pass_])
    compiled.report.model = setup.name
    outcome: dict = {}
    if setup.evaluate is not None:
        outcome["accuracy_before"] = setup.evaluate(setup.model)
        outcome["accuracy_pruned"] = setup.evaluate(compiled)
    run = _run_info(args, setup, epochs)
    if epochs:
        if not args.no_save:  # a failure while fine-tuning keeps the pruned model
            save_output(Path(args.output), compiled, {**run, "finetune_epochs": 0}, outcome,
                        setup)
        try:
            outcome.update(_finetune(compiled, setup, epochs, _loss(args)))
        except Exception as exc:
            kept = "nothing was saved (--no-save)" if args.no_save else \
                f"the pruned model before fine-tuning is saved in {args.output}/"
            raise CliError(f"fine-tuning failed ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())}); {kept}") from exc
    print(compiled.report)
    for line in _outcome_lines(outcome, epochs):
        print(line)
    for note in setup.notes:
        print(f"note: {note}")
    if args.json:
        atomic_write_text(args.json, json.dumps(_results(compiled, run, outcome), indent=2))
    if not args.no_save:
        out = save_output(Path(args.output), compiled, run, outcome, setup)
        took = progress.format_seconds(time.perf_counter() - start)
        plot = ", layers.png" if _can_plot() else ""
        what = "a Hugging Face model directory (from_pretrained reads it)" \
            if args.backend == "module" and is_hf_spec(args.model) else \
            f"{model_file(args.backend)} (the pruned model; prunec.load reads it)"
        print(f"\nSaved to {out}/ in {took}: {what}, plan.json, report.md, report.json{plot}")
        if not plot:
            print("note: layers.png (the per-layer plot) was skipped: matplotlib is not "
                  "installed (pip install matplotlib)")
        if isinstance(setup.model, str):  # an .onnx file: the user's own graph came back
            print(f"Next: your ONNX Runtime code loads {_quote(out / 'model.onnx')} unchanged "
                  f"(same input and output names and dynamic axes as {setup.name}); time it "
                  f"against {setup.name} with\n  prunec bench {_quote(out)}")
        else:
            print(f"Next: time it against the unpruned model with\n  prunec bench "
                  f"{_quote(out)} --backend onnxruntime")
    return 0


def _loss(args: argparse.Namespace) -> str:
    if getattr(args, "loss", None):
        return args.loss
    return "causal_lm" if is_hf_spec(args.model) else "default"


def _finetune(compiled, setup: Setup, epochs: int, loss: str = "default") -> dict:
    lr = 2e-3 if setup.builtin else 1e-4
    what = "causal-LM loss and distillation" if loss == "causal_lm" else "distillation"
    with progress.step(f"fine-tuning, {epochs} epoch{'s' * (epochs != 1)} of {what}"):
        _, history = finetune(compiled, setup.train_data, epochs=epochs, teacher=setup.model,
                              lr=lr, alpha=0.5, loss=loss)
    out = {"finetune_epochs": epochs, "finetune_final_loss": history[-1]["loss"] if history else None}
    if setup.evaluate is not None:
        out["accuracy_finetuned"] = setup.evaluate(compiled)
    return out


def _outcome_lines(outcome: dict, epochs: int) -> list[str]:
    if "accuracy_before" not in outcome:
        if epochs:
            return [f"fine-tuned {epochs} epochs; final loss {outcome['finetune_final_loss']:.4f}"]
        return []
    lines = ["", f"digits test accuracy  {outcome['accuracy_before']:.1%} unpruned",
             f"                      {outcome['accuracy_pruned']:.1%} right after pruning, "
             f"before fine-tuning (what the removed channels told apart is lost until "
             f"training recovers it)"]
    if "accuracy_finetuned" in outcome:
        lines.append(f"                      {outcome['accuracy_finetuned']:.1%} after {epochs} "
                     f"epoch{'s' * (epochs != 1)} of distillation from the unpruned model")
    return lines


def _quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


def _run_info(args: argparse.Namespace, setup: Setup, epochs: int) -> dict:
    """How the model was made, so that ``prunec bench DIR`` can rebuild the unpruned one."""
    model = args.model  # an .onnx file by its absolute path: bench finds it from anywhere
    if isinstance(model, str) and model.lower().endswith(".onnx"):
        model = str(Path(model).resolve())
    return {"model": model, "inputs": [_input_text(s) for s in args.inputs],
            "data": args.data, "static": args.static, "pass": args.pass_name,
            "ratio": args.ratio, "targets": args.targets, "scope": args.scope,
            "round_to": args.round_to, "backend": args.backend, "finetune_epochs": epochs,
            "version": version_text()}


def _input_text(spec) -> str:
    dtype = str(spec.dtype).removeprefix("torch.")
    shape = "x".join(map(str, spec.shape))
    return f"{spec.name}:{dtype}:{shape}" if spec.name else f"{dtype}:{shape}"


def _results(compiled, run: dict, outcome: dict) -> dict:
    return {"run": run, "report": compiled.report.to_dict(), **outcome}


def _plans_of(compiled) -> list:
    plans = getattr(compiled, "plans", None)
    if plans is None:
        plans = [e["plan"] for e in compiled.report.passes if e.get("plan")]
    return list(plans)


def model_file(backend: str) -> str:
    """The saved model's file name: ``.pt2`` (torch, inductor), ``.onnx``, TensorRT ``.plan``."""
    suffix = {"onnx": ".onnx", "onnxruntime": ".onnx", "tensorrt": ".plan"}.get(backend, ".pt2")
    return f"model{suffix}"


def _can_plot() -> bool:
    """Whether matplotlib is there for layers.png (an optional output)."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):  # a broken or stubbed-out installation
        return False


def save_output(out: Path, compiled, run: dict, outcome: dict, setup: Setup | None = None) -> Path:
    """Write the artifact, plan.json, report.md, report.json and layers.png into ``out``.

    With ``--backend module`` the artifact is a directory: ``out`` itself (for ``hf:DIR`` a
    Hugging Face model directory, with ``DIR``'s tokenizer files copied in).

    Every file is written atomically (:mod:`prunec.fileio`); report.json, which
    ``prunec bench DIR`` reads first, is written last. layers.png is skipped when
    matplotlib is not installed (the command prints a note).
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--output {out}: cannot create it ({exc.strerror or exc})") from None
    with progress.step(f"saving to {out}/"):
        if run["backend"] == "module":
            if setup is not None and is_hf_spec(setup.spec):
                restore_use_cache(compiled, getattr(setup, "use_cache", None))
            compiled.save(out)
            if setup is not None and is_hf_spec(setup.spec):
                copy_tokenizer(setup.spec, out)
        else:
            compiled.save(out / model_file(run["backend"]))
        plans = [json.loads(p.to_json()) for p in _plans_of(compiled)]
        atomic_write_text(out / "plan.json", json.dumps({"plans": plans}))
        text = compiled.report.to_markdown(title=f"prunec: {compiled.report.model}")
        lines = _outcome_lines(outcome, run["finetune_epochs"])
        if lines:
            text += "\n## Accuracy\n\n" + "\n".join(f"    {l}" for l in lines if l) + "\n"
        atomic_write_text(out / "report.md", text)
        if _can_plot():
            compiled.report.plot(out / "layers.png")
        atomic_write_text(out / "report.json",
                          json.dumps(_results(compiled, run, outcome), indent=2))
    return out


# ---------------------------------------------------------------------------- analyze
def cmd_analyze(args: argparse.Namespace) -> int:
    setup = load_setup(args)
    if not args.after:
        with progress.step("capturing and analysing"):
            analysis = prunec.analyze(setup.model, setup.args, setup.kwargs or None,
                                      dynamic=capture_dynamic(args))
        print(analysis.table())
        print()
        print(analysis.blocks.table())  # residual blocks that depth pruning can remove
        prunable = len(analysis.prunable())
        print(f"\n{prunable} of {len(analysis)} groups can be pruned, "
              f"{len(analysis.blocks.removable())} of {len(analysis.blocks)} residual blocks "
              f"removed whole; 'prunec analyze --after' shows the widths after pruning.")
        return 0
    with progress.step("capturing and pruning"):
        backend = "onnxruntime" if isinstance(setup.model, str) else "torch"  # .onnx: its file
        compiled = compile_model(args, setup, [make_pass(args, setup)], backend=backend)
    compiled.report.model = setup.name
    print(compiled.report)
    print()
    print(compiled.report.layers_markdown())
    return 0


# ---------------------------------------------------------------------------- bench
def _saved_setup(args: argparse.Namespace) -> tuple[Setup, list]:
    """The unpruned model and the saved plans of a ``prunec prune`` output directory."""

    folder = Path(args.saved)
    try:
        results = json.loads((folder / "report.json").read_text())
        plans = json.loads((folder / "plan.json").read_text())["plans"]
        run = results["run"]
        model, static, inputs = run["model"], bool(run["static"]), list(run["inputs"])
        if not isinstance(model, str) or not isinstance(plans, list):
            raise TypeError("wrong types")
        inputs = [parse_input(str(t)) for t in inputs]
        # each plan names its pass (its own JSON, or report.json's entries for older ones)
        plans = plans_from_metadata({"plans": plans,
                                     "passes": (results.get("report") or {}).get("passes")})
    except CliError as exc:
        raise CliError(f"{folder}/report.json is malformed: {exc}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, PrunecError,
            argparse.ArgumentTypeError) as exc:
        what = f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else \
            f"{exc.strerror or exc}: {exc.filename}"
        raise CliError(f"{folder}: not a directory written by 'prunec prune', or its "
                       f"report.json / plan.json is malformed ({what})") from None
    if model != BUILTIN and not args.trust_code:
        raise CliError(f"{folder}/report.json says the model comes from {model!r}: rebuilding "
                       f"it imports that module and runs its code. If you trust {folder}, "
                       f"add --trust-code")
    args.model, args.static, args.inputs = model, static, inputs
    args.data = None
    return load_setup(args), plans


def cmd_bench(args: argparse.Namespace) -> int:
    onnx_run = _saved_onnx_run(args) if args.saved else None
    if onnx_run is not None:  # pruned from an .onnx file: time the two files
        return _bench_saved_onnx(args, *onnx_run)
    if args.saved:
        setup, plans = _saved_setup(args)
        label = f"{Path(args.saved)} (plans replayed on {args.backend})"
        with progress.step(f"capturing and lowering to {args.backend}"):
            dense = compile_model(args, setup, [])
            pruned = compile_model(args, setup, [], plans=plans)
    else:
        setup = load_setup(args)
        label = f"{args.pass_name} pruning at ratio {args.ratio}"
        pass_ = make_pass(args, setup)
        with progress.step(f"capturing, pruning and lowering to {args.backend}"):
            dense = compile_model(args, setup, [])
            pruned = compile_model(args, setup, [pass_])
    pruned.report.model = setup.name
    print(pruned.report)
    _check_static_batches(args, setup)
    names = (f"unpruned/{args.backend}", f"pruned/{args.backend}")
    result = benchmark(dict(zip(names, (dense, pruned))), _batch_inputs(setup),
                       args.batch_sizes, iters=args.iters, time_budget=args.time_budget,
                       macs=dict(zip(names, (dense.report.macs_per_sample_before,
                                             pruned.report.macs_per_sample_after))))
    print(f"\nLatency of {label}:\n")
    print(result.to_markdown())
    if args.json:
        atomic_write_text(args.json, json.dumps({"report": pruned.report.to_dict(),
                                                 "bench": result.to_dict()}, indent=2))
    return 0


def _saved_onnx_run(args: argparse.Namespace) -> tuple[dict, dict] | None:
    """``(run, report)`` of a ``prunec prune`` output made from an ``.onnx`` file; None for
    anything else (``_saved_setup`` then reads the directory and names what is wrong)."""
    try:
        results = json.loads((Path(args.saved) / "report.json").read_text())
        run, report = results["run"], results.get("report") or {}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    model = run.get("model") if isinstance(run, dict) else None
    if not (isinstance(model, str) and model.lower().endswith(".onnx")):
        return None
    return run, report if isinstance(report, dict) else {}


def _bench_saved_onnx(args: argparse.Namespace, run: dict, report: dict) -> int:
    """Time DIR/model.onnx against the original file it was pruned from, both on ONNX
    Runtime, interleaved, at the saved ``--input`` shapes with the batch dimension (the
    first) set to each of ``--batch-sizes``. Loading an ONNX file runs no code, so this
    needs no ``--trust-code``."""

    folder, original = Path(args.saved), Path(run["model"])
    if args.backend not in ("torch", "onnx", "onnxruntime"):  # "torch": the default
        raise CliError(f"{folder} holds an ONNX graph: it is timed on ONNX Runtime only; "
                       f"drop --backend {args.backend}")
    pruned_file = folder / "model.onnx"
    for path, what in ((original, "the original model it was pruned from"),
                       (pruned_file, "the pruned model")):
        if not path.is_file():
            raise CliError(f"{path}: not found ({what}, named in {folder}/report.json); "
                           f"'prunec bench {folder}' times the pruned file against it")
    try:
        specs = [parse_input(str(t)) for t in run["inputs"]]
    except (KeyError, TypeError, argparse.ArgumentTypeError) as exc:
        raise CliError(f"{folder}/report.json is malformed: its inputs ({exc})") from None
    generator = torch.Generator().manual_seed(0)
    feeds = {s.name: s.make(generator) for s in specs}
    models = {}
    with progress.step("loading both files into ONNX Runtime"):
        for name, path in ((f"unpruned/{original.name}", original),
                           (f"pruned/{pruned_file.name}", pruned_file)):
            proto, _, external = load_model(str(path))
            _check_onnx_batches(proto, args.batch_sizes, path)
            models[name] = OriginalOnnxArtifact(proto, external=external,
                                                intra_op_threads=args.threads or 0)

    def make(batch: int) -> tuple[tuple, dict]:
        return ({n: t[:1].expand(batch, *t.shape[1:]).contiguous() if t.dim() else t
                 for n, t in feeds.items()},), {}

    before, after = report.get("macs_per_sample_before"), report.get("macs_per_sample_after")
    macs = dict(zip(models, (before, after))) \
        if all(isinstance(m, (int, float)) and m > 0 for m in (before, after)) else None
    result = benchmark(models, make, args.batch_sizes, iters=args.iters,
                       time_budget=args.time_budget, macs=macs)
    print(f"\nLatency of {pruned_file} against {original} (ONNX Runtime, CPU):\n")
    print(result.to_markdown())
    if args.json:
        atomic_write_text(args.json, json.dumps({"report": report, "bench": result.to_dict()},
                                                indent=2))
    return 0


def _check_onnx_batches(proto, batch_sizes: list[int], path: Path) -> None:
    """A graph input whose first dimension is fixed takes only that batch size."""
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and set(batch_sizes) != {dims[0].dim_value}:
            raise CliError(f"{path}: graph input {value.name!r} fixes the batch size to "
                           f"{dims[0].dim_value}; pass --batch-sizes {dims[0].dim_value}")


def _check_static_batches(args: argparse.Namespace, setup: Setup) -> None:
    batch = batch_size_of(setup.args, setup.kwargs)
    if args.static and set(args.batch_sizes) != {batch}:
        raise CliError(f"--static fixes the batch size to the example's ({batch}); pass "
                       f"--batch-sizes {batch}")


def _batch_inputs(setup: Setup):
    def expand(t: Any, batch: int) -> Any:
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            return t[:1].expand(batch, *t.shape[1:]).contiguous()
        return t

    def make(batch: int) -> tuple[tuple, dict]:
        import torch.utils._pytree as pytree

        return pytree.tree_map(lambda t: expand(t, batch), (setup.args, setup.kwargs))

    return make
