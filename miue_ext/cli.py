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
import contextlib
import importlib
import os
import re
import signal
import sys
import threading

from miue_ext.errors import (
    DistributedError,
    InputError,
    LostProcessesError,
    NonFiniteLossError,
    OutputError,
    Terminated,
)

SUBCOMMANDS = {  # name -> (module, one-line help)
    "generate": ("miue_ext.commands.generate", "compute MI-UE (or EM) perturbations and write a poison file"),
    "export": ("miue_ext.commands.export", "write a poison file as PNGs + labels.csv + EM-style perturbation.pt"),
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
    """Run `miue ARGV...` and return its exit code. Without `argv` (the `miue` program itself),
    a run stopped by a signal ends the process at once after its line: an interrupted import
    can leave state whose teardown fails, or re-raises the signal (exit -2 instead of 130)."""
    owns_process = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((word for word in argv if not word.startswith("-")), None)
    prog = f"miue {command}" if command in SUBCOMMANDS else "miue"
    args = None
    with _StopSignals(prog, give_up=owns_process) as signals:
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
                _end_process_now(code)
            return code


def _report(prog: str, cause: BaseException, args: argparse.Namespace | None, err: BaseException) -> int:
    """Print the one line for `cause` (the signal that stopped the run, whatever `err` it ended
    with: interrupted code fails in any way); return the exit code. MIUE_DEBUG: `err`'s traceback."""
    interrupt = _interrupt_behind(cause)
    if isinstance(interrupt, Terminated):
        return _fail(prog, f"terminated ({interrupt.signal_name}){_checkpoint_note(args)}", 128 + interrupt.signum, err)
    if interrupt is not None:
        return _fail(prog, f"interrupted{_checkpoint_note(args)}", 130, err)
    if isinstance(err, InputError):
        return _fail(prog, f"error: {err}", 2, err)
    if isinstance(err, LostProcessesError):
        _fail(prog, f"error: {err}", 1, err)
        _end_process_now(1)
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


def _interrupt_behind(err: BaseException | None) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that `err` is, or that was being handled when it was raised: an
    interrupted import can leave a half-made module whose cleanup then fails with another error."""
    while err is not None:
        if isinstance(err, KeyboardInterrupt):
            return err
        err = err.__context__
    return None


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


class _StopSignals:
    """While a command runs, Ctrl-C (SIGINT) and SIGTERM stop it the same way: the signal raises
    KeyboardInterrupt or Terminated, cleanups run, one line is printed, no partial output is left.

    An exception raised from a signal handler can be lost (a library's bare `except:` eats it,
    mostly in the imports torch makes during the first epoch) or end up as another error (a
    half-imported module). So a watcher thread, woken by the signal itself (set_wakeup_fd),
    delivers it again every second until main() has caught it (a redelivery is ignored while a
    cleanup of the first one runs), and whatever error the run ends with is reported as the
    signal. With `give_up` (main() owns the process), a run that has not stopped GIVE_UP_S
    seconds after the signal (its main thread is stuck in C++, e.g. in a collective with a dead
    peer under torchrun) ends at once. A signal ignored by whoever started us stays ignored."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REDELIVER_S = 1.0
    GIVE_UP_S = 5.0  # under the grace before SIGKILL of torchrun (30 s), Docker (10 s), systemd (90 s)

    def __init__(self, prog: str, give_up: bool):
        self.prog, self.give_up = prog, give_up
        self.done, self.received, self.redelivered, self.defer = threading.Event(), None, False, False
        self.previous, self.watcher, self.wakeup, self.unraisablehook = {}, None, None, None

    def __enter__(self):
        try:
            for signum in self.SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self.previous[signum] = signal.signal(signum, self._handler)
        except ValueError:  # not the main thread: signals are not ours to set
            return self
        self.unraisablehook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self.wakeup = (read_fd, write_fd, signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False))
        self.watcher = threading.Thread(target=self._watch, name="miue-signals", daemon=True)
        self.watcher.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        if self.watcher is not None:
            with contextlib.suppress(BlockingIOError):  # (a full pipe wakes it anyway)
                os.write(self.wakeup[1], b"\0")  # wake the watcher if it still waits for a signal
            self.watcher.join()
        for signum, previous in self.previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        if self.unraisablehook is not None:
            sys.unraisablehook = self.unraisablehook
        if self.wakeup is not None:
            read_fd, write_fd, previous_fd = self.wakeup
            signal.set_wakeup_fd(previous_fd)
            os.close(read_fd)
            os.close(write_fd)

    @contextlib.contextmanager
    def deferred(self):
        """A signal inside the block takes effect at its end: interrupted, torch's imports can
        abort the interpreter (a C++ initialiser meets the exception) or print errors of their own."""
        self.defer = True
        try:
            yield
        finally:
            self.defer = False
        if self.received is not None:
            raise self.interrupt()

    def interrupt(self) -> KeyboardInterrupt | None:
        """The exception of the first signal received, if any."""
        if self.received is None:
            return None
        return KeyboardInterrupt() if self.received == signal.SIGINT else Terminated(self.received)

    def _handler(self, signum, frame):
        redelivered, self.redelivered = self.redelivered, False
        if self.done.is_set():  # main() is reporting
            return
        if self.received is None:
            self.received = signum
        if self.defer or redelivered and _interrupt_behind(sys.exc_info()[1]) is not None:
            return  # later, or the first one is on its way out: let its cleanups finish
        raise self.interrupt()

    def _unraisable(self, unraisable) -> None:
        """Raised where it cannot propagate (a __del__, a weakref callback), the interrupt is not
        worth a traceback: it is delivered again. Anything else goes to the previous hook."""
        if not (self.received is not None and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            self.unraisablehook(unraisable)

    def _watch(self) -> None:
        while self.received is None:  # Python's C-level handler writes each signal's number here
            signum = os.read(self.wakeup[0], 1)[0]
            if self.done.is_set():
                return
            if signum in self.SIGNALS and self.received is None:
                self.received = signum
        main_thread, waited = threading.main_thread().ident, 0.0
        while not self.done.wait(self.REDELIVER_S):
            waited += self.REDELIVER_S
            if self.give_up and waited >= self.GIVE_UP_S:
                what = "interrupted" if self.received == signal.SIGINT else f"terminated ({self.interrupt().signal_name})"
                print(f"{self.prog}: {what}; no response for {self.GIVE_UP_S:g} s, stopped at once", file=sys.stderr)
                _end_process_now(128 + self.received)
            self.redelivered = True
            signal.pthread_kill(main_thread, self.received)  # a real signal: it also ends a sleep or a wait


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
