"""`miue`: the command line. Each subcommand lives in its own module of miue_ext.commands
that defines `add_arguments(parser)` and `run(args) -> int`; to add one,
add a line to SUBCOMMANDS.

Exit codes: 0 success, 1 the run failed for a reason outside the input (a non-finite loss, a
lost rank, a full disk, an internal error), 2 bad input, 130 interrupted (Ctrl-C), 143
terminated (SIGTERM). Every failure is one line on stderr, `miue COMMAND: ...`; with
MIUE_DEBUG=1 its traceback comes first.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from miue_ext.errors import (
    DistributedError,
    InputError,
    LostProcessesError,
    NonFiniteLossError,
    OutputError,
    Terminated,
)
from miue_ext.stop_signals import StopSignals, end_process_now, interrupt_behind

SUBCOMMANDS = {  # name -> (module, one-line help)
    "generate": ("miue_ext.commands.generate", "compute MI-UE (or EM) perturbations and write a poison file"),
    "export": (
        "miue_ext.commands.export",
        "write a poison file as a folder: PNGs + labels.csv, the layouts of TAP/APBench/ISS, EM or "
        "AVATAR, or an image folder's own layout (--format)",
    ),
    "evaluate": ("miue_ext.commands.evaluate", "train a victim on a poisoned set and report clean test accuracy"),
    "plot": ("miue_ext.commands.plot", "draw the accuracy curves of several evaluation reports on one plot"),
    "stats": ("miue_ext.commands.stats", "perturbation norms, PSNR, SSIM and an image grid of a poison file"),
    "mi": ("miue_ext.commands.mi", "estimate the mutual information between clean and poisoned features"),
    "bench": ("miue_ext.commands.bench", "time the fused ops against eager PyTorch on this machine"),
}
DEBUG_VARIABLE = "MIUE_DEBUG"


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
        sub = subparsers.add_parser(
            name, help=help_text, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `miue ARGV...` and return its exit code. Without `argv` (the `miue` program itself),
    a run stopped by a signal ends the process at once after its line: an interrupted import
    can leave state whose teardown fails, or re-raises the signal (exit -2 instead of 130)."""
    owns_process = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((word for word in argv if not word.startswith("-")), None)
    prog = f"miue {command}" if command in SUBCOMMANDS else "miue"
    args = None
    with StopSignals(prog, give_up=owns_process) as signals:
        try:
            with signals.deferred():  # the parser imports every subcommand, and torch
                parser = build_parser()
            args = parser.parse_args(argv)
            return int(args.run(args) or 0)
        except (SystemExit, GeneratorExit):  # argparse: --help, a usage error (one line, exit 2)
            raise
        except BaseException as err:
            signals.done.set()  # from here on a signal changes nothing: the line is being written
            code = _report(prog, signals.interrupt() or err, args, err)
            if owns_process and code >= 128:
                end_process_now(code)
            return code


def _report(prog: str, cause: BaseException, args: argparse.Namespace | None, err: BaseException) -> int:
    """Print the one line for `cause` (the signal that stopped the run, whatever `err` it ended
    with: interrupted code fails in any way); return the exit code. MIUE_DEBUG: `err`'s traceback."""
    interrupt = interrupt_behind(cause)
    if isinstance(interrupt, Terminated):
        return _fail(prog, f"terminated ({interrupt.signal_name}){_checkpoint_note(args)}", 128 + interrupt.signum, err)
    if interrupt is not None:
        return _fail(prog, f"interrupted{_checkpoint_note(args)}", 130, err)
    if isinstance(err, InputError):
        return _fail(prog, f"error: {err}", 2, err)
    if isinstance(err, LostProcessesError):
        _fail(prog, f"error: {err}", 1, err)
        end_process_now(1)
    if isinstance(err, (NonFiniteLossError, DistributedError)):
        return _fail(prog, f"error: {err}", 1, err)
    if isinstance(err, OutputError):
        return _fail(prog, f"error: {err}{_checkpoint_note(args)}", 1, err)
    if isinstance(err, OSError):  # one the command did not turn into an InputError/OutputError
        return _fail(prog, f"error: {_describe_os_error(err)}{_checkpoint_note(args)}", 1, err)
    if not isinstance(err, Exception):
        raise err
    what = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__  # a bug
    hint = "" if _debug() else f" (run with {DEBUG_VARIABLE}=1 for the traceback)"
    return _fail(prog, f"internal error: {_shorten(_one_line(what))}{hint}{_checkpoint_note(args)}", 1, err)


def _fail(prog: str, message: str, code: int, err: BaseException) -> int:
    if _debug():
        import traceback

        traceback.print_exception(err)
    print(f"{prog}: {_one_line(message)}", file=sys.stderr)
    return code


def _debug() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text.strip())


def _shorten(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _checkpoint_note(args: argparse.Namespace | None) -> str:
    """For `miue generate` that stopped: where the checkpoint to continue from is, if any."""
    if getattr(args, "command", None) != "generate":
        return ""
    from miue_ext.commands.generate import _checkpoint_dir
    from miue_ext.generate.checkpoint import MANIFEST_NAME, checkpoint_path

    folder = _checkpoint_dir(args)
    if checkpoint_path(folder).is_file() or (folder / MANIFEST_NAME).is_file():
        return f"; the last checkpoint is in {folder} (run the same command with --resume to continue)"
    return "; no checkpoint was written"


def _describe_os_error(err: OSError) -> str:
    reason = err.strerror or str(err)
    path = _path_of(err)
    return f"{path}: {reason}" if path else reason


def _path_of(err: OSError) -> str | None:
    """The file an OS error is about (for a rename, the destination). atomic_write names its
    target on errors of write() and fsync(), which name no file of their own."""
    for name in (err.filename2, err.filename):
        if isinstance(name, (str, bytes, os.PathLike)):
            return os.fsdecode(name)
    return None


if __name__ == "__main__":
    sys.exit(main())
