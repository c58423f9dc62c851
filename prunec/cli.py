"""The ``prunec`` command.

``prunec prune`` (the default) prunes a model and prints the report: by default the built-in
digits classifier that ships with prunec (trained on first use on scikit-learn's real
handwritten digits), with its test accuracy before and after. ``--model module:factory``
names any factory returning a module or ``(module, example_inputs)``.
``prunec analyze`` prints the channel groups; ``prunec bench`` times the unpruned and pruned
artifacts interleaved on a backend.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

import torch

__all__ = ["main"]

PASSES = ("magnitude", "random", "variance")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunec", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    for name in ("prune", "analyze", "bench"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="builtin", help="'builtin' or module:factory")
        p.add_argument("--input-shape", default=None,
                       help="example input shape for a factory returning only a module, e.g. 1,3,224,224")
        if name == "analyze":
            continue
        p.add_argument("--pass", dest="pass_name", choices=PASSES,
                       default="variance" if name == "prune" else "magnitude")
        p.add_argument("--ratio", type=float, default=0.5)
        p.add_argument("--targets", choices=("all", "mlp"), default="all")
        p.add_argument("--scope", choices=("global", "local"), default="global")
        p.add_argument("--round-to", type=int, default=8)
        p.add_argument("--backend", default="torch")
        p.add_argument("--json", default=None, help="write the report (and timings) here")
        if name == "prune":
            p.add_argument("--finetune-epochs", type=int, default=3,
                           help="distillation epochs on the built-in data (0: none)")
        if name == "bench":
            p.add_argument("--batch-sizes", default="1,8")
            p.add_argument("--iters", type=int, default=50)
    return parser


def _load_model(spec: str, input_shape: str | None):
    if spec == "builtin":
        from prunec.zoo import default_model

        return default_model()
    module_name, _, factory = spec.partition(":")
    if not factory:
        raise SystemExit(f"--model must be 'builtin' or module:factory, got {spec!r}")
    made = getattr(importlib.import_module(module_name), factory)()
    if isinstance(made, tuple):
        model, inputs = made
        return model, inputs if isinstance(inputs, tuple) else (inputs,)
    if input_shape is None:
        raise SystemExit("the factory returned only a module: pass --input-shape, e.g. 1,3,224,224")
    return made, (torch.randn(*[int(s) for s in input_shape.split(",")]),)


def _make_pass(args, model, inputs):
    from prunec import passes

    common = dict(targets=args.targets, round_to=args.round_to)
    if args.pass_name == "magnitude":
        return passes.MagnitudePruning(args.ratio, scope=args.scope, **common)
    if args.pass_name == "random":
        return passes.RandomPruning(args.ratio, scope=args.scope, **common)
    calibration = _calibration(args, inputs)
    return passes.VarianceBasedPruning(args.ratio, calibration, **common)


def _calibration(args, inputs):
    if args.model == "builtin":
        from prunec.zoo import digits_data

        x_train = digits_data()[0]
        return [(x,) for x in x_train.split(64)]
    return [inputs]


def _builtin_accuracy(module) -> float | None:
    from prunec.zoo import digits_data, evaluate

    _, _, x_test, y_test = digits_data()
    return evaluate(module, x_test, y_test)


def cmd_prune(args) -> dict:
    import prunec

    model, inputs = _load_model(args.model, args.input_shape)
    compiled = prunec.compile(model, inputs, [_make_pass(args, model, inputs)], backend=args.backend)
    print(compiled.report)
    out = {"report": compiled.report.to_dict()}
    if args.model == "builtin":
        before, after = _builtin_accuracy(model), _builtin_accuracy(compiled)
        print(f"digits test accuracy {100 * before:.2f}% -> {100 * after:.2f}% right after pruning")
        out.update(accuracy_before=before, accuracy_after=after)
        if args.finetune_epochs > 0:
            tuned = _builtin_finetune(compiled, model, args.finetune_epochs)
            print(f"digits test accuracy after {args.finetune_epochs} epochs of distillation: {100 * tuned:.2f}%")
            out.update(accuracy_finetuned=tuned)
    return out


def _builtin_finetune(compiled, model, epochs: int) -> float:
    from prunec.train import finetune
    from prunec.zoo import digits_data

    x_train, y_train = digits_data()[:2]
    data = list(zip(x_train.split(32), y_train.split(32)))
    finetune(compiled, data, epochs=epochs, teacher=model, lr=2e-3, alpha=0.5)
    return _builtin_accuracy(compiled)


def cmd_analyze(args) -> dict:
    import prunec

    model, inputs = _load_model(args.model, args.input_shape)
    analysis = prunec.analyze(model, inputs)
    print(analysis.table())
    return {"groups": len(analysis), "prunable": len(analysis.prunable())}


def cmd_bench(args) -> dict:
    import prunec
    from prunec.backends.bench import benchmark

    model, inputs = _load_model(args.model, args.input_shape)
    dense = prunec.compile(model, inputs, [], backend=args.backend)
    pruned = prunec.compile(model, inputs, [_make_pass(args, model, inputs)], backend=args.backend)
    print(pruned.report)

    def make_inputs(batch: int):
        return tuple(t[:1].expand(batch, *t.shape[1:]).contiguous() for t in inputs), {}

    result = benchmark({f"dense/{args.backend}": dense, f"pruned/{args.backend}": pruned}, make_inputs,
                       [int(b) for b in args.batch_sizes.split(",")], iters=args.iters,
                       macs={f"dense/{args.backend}": dense.report.macs_before,
                             f"pruned/{args.backend}": pruned.report.macs_after})
    print(result.to_markdown())
    return {"report": pruned.report.to_dict(), "bench": result.to_dict()}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        argv = ["prune", *argv]
    args = _parser().parse_args(argv)
    out = {"prune": cmd_prune, "analyze": cmd_analyze, "bench": cmd_bench}[args.command](args)
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
