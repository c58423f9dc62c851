"""The ``prunec`` command: prune a model, look at its channel groups, time it.

``prunec`` alone runs ``prunec prune`` on the built-in digits classifier: it prunes it with
variance-based pruning, fine-tunes it briefly by distillation, prints the report and saves
the pruned model, its plan and the report to ``./prunec-out/``. ``--model module:factory``
prunes your own model instead (``--data module:function`` gives it calibration and training
batches). ``prunec analyze`` lists the channel groups (``--after``: the per-layer widths after
pruning); ``prunec bench`` times the unpruned and the pruned model on a backend, interleaved.

Results go to standard output; progress bars and status lines go to standard error (hidden
when it is not a terminal, or with ``--quiet``). Expected failures (a bad option, a module
that is not there, a model prunec cannot handle) end with one line and exit code 2;
``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import re
import sys
from typing import Iterator

import torch

from prunec import progress
from prunec.backends import registry
from prunec.cli_commands import cmd_analyze, cmd_bench, cmd_prune
from prunec.cli_specs import (
    BUILTIN, PASSES, CliError, batch_sizes, nonnegative_int, parse_input, positive_float,
    latency_fraction, positive_int, ratio, version_text,
)
from prunec.cli_hf import add_llm_options
from prunec.errors import PrunecError

__all__ = ["main", "build_parser"]

DEFAULT_OUTPUT = "prunec-out"
DESCRIPTION = """\
prunec: a structured-pruning compiler for PyTorch models.

'prunec' alone runs 'prunec prune' on the built-in digits classifier: it removes half of its
bottleneck channels with variance-based pruning, fine-tunes it briefly by distillation,
prints the report and saves the pruned model, its plan and the report to ./prunec-out/.
Give --model module:factory to prune your own model."""


# ---------------------------------------------------------------------------- parser
class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults, except where there is none to show or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (raised, so main() prints them)."""

    def error(self, message: str):  # type: ignore[override]
        raise CliError(f"{message} (see {self.prog} --help)")


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=BUILTIN, metavar="SPEC",
                   help="'builtin' (the digits classifier shipped with prunec) or "
                        "module:factory, a function returning a module, (module, inputs) or "
                        "(module, args, kwargs); the current directory is searched first")
    g.add_argument("--input", dest="inputs", action="append", type=parse_input,
                   metavar="[NAME:][DTYPE:]SHAPE",
                   help="an example input, repeatable: 1x3x224x224 (positional float32), "
                        "input_ids:int64:1x128 (keyword); integers are ones, floats random; "
                        "replaces the factory's inputs")
    g.add_argument("--data", metavar="module:function",
                   help="a function returning (inputs, target) batches as prunec.finetune "
                        "takes them: their inputs calibrate variance-based pruning and the "
                        "pairs fine-tune (default for 'builtin': its training digits)")
    g.add_argument("--static", action="store_true",
                   help="capture static shapes (dynamic=False); by default every input axis "
                        "is dynamic where the model allows it")
    g.add_argument("--batch-only", action="store_true",
                   help="capture with only the batch axis dynamic (dynamic='batch'): much "
                        "faster to export for window-partitioning models such as Swin")
    o = p.add_argument_group("output")
    o.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars or status lines (they are also off when standard "
                        "error is not a terminal)")
    o.add_argument("-v", "--verbose", action="count", default=0,
                   help="log what happens (-v: info, -vv: debug)")
    o.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error")
    o.add_argument("--threads", type=positive_int, metavar="N",
                   help="threads: torch's, and ONNX Runtime's intra-op threads for "
                        "--backend onnxruntime and .onnx models (default: 1 for the built-in "
                        "model, whose tensors are too small to share; each runtime's default "
                        "otherwise)")


def _pass_options(p: argparse.ArgumentParser, *, title: str = "pruning") -> None:
    g = p.add_argument_group(title)
    g.add_argument("--pass", dest="pass_name", choices=sorted(PASSES), default="variance",
                   help="; ".join(f"{k}: {v}" for k, v in PASSES.items()))
    g.add_argument("--ratio", type=ratio, default=0.5,
                   help="fraction of the candidate units to remove, in [0, 1)")
    g.add_argument("--latency", type=latency_fraction, default=None, metavar="F",
                   help="instead of --ratio: prune to this fraction of the dense latency, "
                        "measured on --backend (e.g. 0.6); tables are cached in "
                        "~/.cache/prunec/latency")
    g.add_argument("--targets", choices=("mlp", "all"),
                   help="mlp: hidden neurons of MLP/FFN blocks and conv bottlenecks; all: every "
                        "prunable group (default: mlp for variance, all for magnitude and "
                        "random, as in the Python API)")
    g.add_argument("--scope", choices=("global", "local"), default="global",
                   help="global: one ranking across layers; local: the same ratio per layer")
    g.add_argument("--round-to", type=positive_int, default=8, metavar="N",
                   help="kept channel counts are multiples of N")
    g.add_argument("--backend", choices=registry.names(), default="torch",
                   help="where the pruned program runs (module: a pruned copy of your own "
                        "model; with --model hf:DIR a Hugging Face model directory)")
    add_llm_options(g)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``prunec`` and its subcommands."""
    parser = _Parser(prog="prunec", formatter_class=_Formatter,
                     description=DESCRIPTION,
                     epilog="examples:\n"
                            "  prunec                                  # the main job\n"
                            "  prunec prune --model mymodels:make --input 1x3x224x224 "
                            "--pass magnitude\n"
                            "  prunec analyze --after --ratio 0.3\n"
                            "  prunec bench prunec-out --backend onnxruntime\n\n"
                            "'prunec COMMAND --help' shows every option of a command.")
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _prune_parser(sub)
    _analyze_parser(sub)
    _bench_parser(sub)
    return parser


def _prune_parser(sub) -> None:
    p = sub.add_parser("prune", formatter_class=_Formatter,
                       help="prune a model, fine-tune it, save it and print the report "
                            "(the default command)",
                       description="Prune a model, fine-tune it by distillation when there is "
                                   "training data, print the report and save the pruned model, "
                                   "its plan and the report.")
    _common(p)
    _pass_options(p)
    g = p.add_argument_group("fine-tuning and saving")
    g.add_argument("--finetune-epochs", type=nonnegative_int, metavar="N",
                   help="epochs of distillation from the unpruned model after pruning "
                        "(default: 3 when there is training data: 'builtin' or --data; "
                        "otherwise 0)")
    g.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR",
                   help="where to save the pruned model, plan.json, report.md, report.json "
                        "and layers.png")
    g.add_argument("--loss", choices=("default", "causal_lm"), default=None,
                   help="fine-tuning loss: causal_lm (next-token cross-entropy plus "
                        "distillation; the default for --model hf:DIR) or default")
    g.add_argument("--no-save", action="store_true", help="save nothing")
    g.add_argument("--json", metavar="PATH", help="also write the report as JSON here")


def _analyze_parser(sub) -> None:
    p = sub.add_parser("analyze", formatter_class=_Formatter,
                       help="list the channel groups: size, parameters, prunable or why not",
                       description="List the channel groups of a model: units, parameters, and "
                                   "whether they can be pruned (or why not). With --after, "
                                   "prune with the pruning options and list each layer's "
                                   "width before and after.")
    _common(p)
    p.add_argument("--after", action="store_true",
                   help="prune (with the options below) and show per-layer widths before and "
                        "after")
    _pass_options(p, title="pruning (with --after)")


def _bench_parser(sub) -> None:
    p = sub.add_parser("bench", formatter_class=_Formatter,
                       help="time the unpruned and the pruned model on a backend, interleaved",
                       description="Time the unpruned and the pruned model on a backend, "
                                   "interleaved, with the speedup's confidence interval. "
                                   "Give a directory saved by 'prunec prune' to time what it "
                                   "saved, or the model and pruning options to prune first.")
    p.add_argument("saved", nargs="?", metavar="DIR",
                   help="a directory written by 'prunec prune' (its model and plan are used)")
    _common(p)
    _pass_options(p)
    g = p.add_argument_group("timing")
    g.add_argument("--batch-sizes", type=batch_sizes, default=[1, 8], metavar="1,8",
                   help="batch sizes to time (default: 1,8)")
    g.add_argument("--iters", type=positive_int, metavar="N",
                   help="timed rounds per batch size (default: as many as --time-budget allows)")
    g.add_argument("--time-budget", type=positive_float, default=10.0, metavar="SECONDS",
                   help="seconds of timing per batch size when --iters is not given")
    g.add_argument("--json", metavar="PATH", help="also write the timings as JSON here")
    p.add_argument("--trust-code", action="store_true",
                   help="allow DIR's saved command to import and run the model factory it "
                        "names (module:function); only for a directory you trust")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; no command (or options only) means ``prune``."""
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["prune", *argv]
    return build_parser().parse_args(argv)


# ---------------------------------------------------------------------------- main
COMMANDS = {"prune": cmd_prune, "analyze": cmd_analyze, "bench": cmd_bench}


@contextlib.contextmanager
def _threads(args: argparse.Namespace) -> Iterator[None]:
    count = args.threads or (1 if args.model == BUILTIN and not getattr(args, "saved", None)
                             else None)
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _quiet_torch_logs() -> None:
    """Hide what a user of the command cannot act on, unless -v or --debug: torch's ERROR
    log of a fake-tensor kernel failing during capture (prunec re-raises that failure as
    one line) and torch's own deprecation warnings about its pytree internals."""
    import logging
    import warnings

    logging.getLogger("torch._subclasses.fake_tensor").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*treespec.*LeafSpec")


def _error_line(exc: BaseException | str) -> str:
    # a message ending in a quoted sentence can end "..": keep one; paths keep theirs
    text = re.sub(r"\.\.(?=\s|$)", ".", " ".join(str(exc).split())) or type(exc).__name__
    return f"prunec: error: {text[:2000]}"


def _os_error_text(exc: OSError) -> str:
    """``<path>: <reason>`` (the path once, even when the message already has it)."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None and str(exc.filename) not in reason:
        return f"{exc.filename}: {reason}"
    return reason


def main(argv: list[str] | None = None) -> int:
    """Run the ``prunec`` command; returns the exit code (0, 2 on an expected failure)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = parse_args(argv)
        progress.setup_logging(args.verbose)
        if not (args.verbose or args.debug):
            _quiet_torch_logs()
        progress.log.debug("options: %s", vars(args))
        with _threads(args), progress.override(False if args.quiet else None):
            return COMMANDS[args.command](args)
    except PrunecError as exc:
        if debug:
            raise
        print(_error_line(exc), file=sys.stderr)
        if not isinstance(exc, CliError):
            print("prunec: run again with --debug for the traceback", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read or written: name it, one line
        if debug:
            raise
        print(_error_line(_os_error_text(exc)), file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - one line instead of a traceback, always
        if debug:
            raise
        print(_error_line(f"{type(exc).__name__}: {exc}"), file=sys.stderr)
        print("prunec: this looks like a bug in prunec; run again with --debug for the "
              "traceback", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
