"""miue_ext: fused kernels and tools for Mutual-Information Unlearnable Examples (MI-UE)."""
import os
import sys


def _started_as_the_cli() -> bool:
    """`miue ...` or `python -m miue_ext ...` (while -m imports the package, argv[0] is "-m")."""
    return os.path.basename(sys.argv[0]) == "miue" or sys.argv[0] == "-m"


class _SignalsDeferred:
    """For the command only: hold Ctrl-C and SIGTERM while torch loads (about a second), then end
    with one line. Raising KeyboardInterrupt there is not an option: inside torch's C++
    initialisation it aborts the process (pybind11: terminate called...) with a core message.
    A library user's import keeps Python's own behaviour."""

    def __enter__(self):
        import signal

        self.received, self.previous = [], {}
        if _started_as_the_cli():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, lambda number, frame: self.received.append(number))
        return self

    def __exit__(self, *exc):
        import signal

        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if self.received:
            terminated = self.received[0] == signal.SIGTERM
            sys.stderr.write("miue: terminated (SIGTERM)\n" if terminated else "miue: interrupted\n")
            sys.stderr.flush()
            os._exit(143 if terminated else 130)
        return False


with _SignalsDeferred():
    import torch  # noqa: F401  (before the compiled extension)

    from . import ops, reference
    from ._extension import has_cuda_kernels
    from .loss import MIUELoss
    from .ops import (
        dist_loss,
        intra_class_cosine,
        mi_ue_loss,
        pgd_update_,
        pgd_update_indexed_,
        sim_loss,
    )

__version__ = "0.1.0"

__all__ = [
    "MIUELoss",
    "dist_loss",
    "has_cuda_kernels",
    "intra_class_cosine",
    "mi_ue_loss",
    "ops",
    "pgd_update_",
    "pgd_update_indexed_",
    "reference",
    "sim_loss",
]
