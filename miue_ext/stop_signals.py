"""How `miue` stops on Ctrl-C (SIGINT) and SIGTERM: one line, exit 130 or 143, no partial output.

Two phases: while the package imports torch (about a second, before miue_ext.cli exists) the
signals are held and end the process after the import (held_while_torch_loads); while a command
runs they raise KeyboardInterrupt or Terminated so that cleanups run (StopSignals, used by cli.main).
Only the standard library and miue_ext.errors are imported here: the package imports this module
before torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from miue_ext.errors import Terminated


def end_process_now(code: int) -> None:
    """Exit without interpreter teardown. A gloo/NCCL group whose peer vanished keeps C++ threads
    with a send pending; at normal exit their destructors call std::terminate (SIGABRT, exit -6)
    after our message. Files are already closed: the poison file is written only on success and
    checkpoints are written atomically, so nothing is lost by skipping teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def started_as_the_cli() -> bool:
    """`miue ...` or `python -m miue_ext ...` (while -m imports the package, argv[0] is "-m")."""
    return os.path.basename(sys.argv[0]) == "miue" or sys.argv[0] == "-m"


def interrupt_behind(err: BaseException | None) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that `err` is, or that was being handled when it was raised: an
    interrupted import can leave a half-made module whose cleanup then fails with another error."""
    while err is not None:
        if isinstance(err, KeyboardInterrupt):
            return err
        err = err.__context__
    return None


class held_while_torch_loads:  # noqa: N801  (used as `with held_while_torch_loads():`)
    """For the command only: hold Ctrl-C and SIGTERM while torch loads (about a second), then end
    with one line. Raising KeyboardInterrupt there is not an option: inside torch's C++
    initialisation it aborts the process (pybind11: terminate called...) with a core message.
    A library user's import keeps Python's own behaviour."""

    def __enter__(self):
        self.received, self.previous = [], {}
        if started_as_the_cli():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, lambda number, frame: self.received.append(number))
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if self.received:
            terminated = self.received[0] == signal.SIGTERM
            sys.stderr.write("miue: terminated (SIGTERM)\n" if terminated else "miue: interrupted\n")
            sys.stderr.flush()
            os._exit(143 if terminated else 130)
        return False


class StopSignals:
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
        if self.defer or redelivered and interrupt_behind(sys.exc_info()[1]) is not None:
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
                what = (
                    "interrupted" if self.received == signal.SIGINT else f"terminated ({self.interrupt().signal_name})"
                )
                print(f"{self.prog}: {what}; no response for {self.GIVE_UP_S:g} s, stopped at once", file=sys.stderr)
                end_process_now(128 + self.received)
            self.redelivered = True
            signal.pthread_kill(main_thread, self.received)  # a real signal: it also ends a sleep or a wait
