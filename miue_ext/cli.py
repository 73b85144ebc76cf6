"""`miue`: the command line. Each subcommand lives in its own module of miue_ext.commands
(or anywhere else) that defines `add_arguments(parser)` and `run(args) -> int`; to add one,
add a line to SUBCOMMANDS.

Exit codes: 0 success, 1 the run failed (e.g. a non-finite loss, a lost rank), 2 bad input, 130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

SUBCOMMANDS = {  # name -> (module, one-line help)
    "generate": ("miue_ext.commands.generate", "compute MI-UE (or EM) perturbations and write a poison file"),
    "export": ("miue_ext.commands.export", "write a poison file as PNGs + labels.csv + EM-style perturbation.pt"),
    "evaluate": ("miue_ext.evaluate.command", "train a victim on a poisoned set and report clean test accuracy"),
    "plot": ("miue_ext.evaluate.plot_command", "draw the accuracy curves of several evaluation reports on one plot"),
    "stats": ("miue_ext.poison_stats", "perturbation norms, PSNR, SSIM and an image grid of a poison file"),
    "mi": ("miue_ext.mi.command", "estimate the mutual information between clean and poisoned features"),
    "bench": ("miue_ext.bench", "time the fused ops against eager PyTorch on this machine"),
}


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit code 2), like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="miue", description="Mutual-Information Unlearnable Examples (MI-UE).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    subparsers.required = True
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=module.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def _end_process_now(code: int) -> None:
    """Exit without interpreter teardown. A gloo/NCCL group whose peer vanished keeps C++ threads
    with a send pending; at normal exit their destructors call std::terminate (SIGABRT, exit -6)
    after our message. Files are already closed: the poison file is written only on success and
    checkpoints are written atomically, so nothing is lost by skipping teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    from miue_ext.errors import DistributedError, InputError, LostProcessesError, NonFiniteLossError

    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except InputError as err:
        print(f"miue {args.command}: error: {err}", file=sys.stderr)
        return 2
    except LostProcessesError as err:
        print(f"miue {args.command}: error: {err}", file=sys.stderr)
        _end_process_now(1)
    except (NonFiniteLossError, DistributedError) as err:
        print(f"miue {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"miue {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
