"""Errors that mean "the user asked for something we cannot do" (CLI exit code 2)."""


class InputError(ValueError):
    """A bad input: missing or corrupt file, invalid hyperparameter, unusable model.

    The CLI prints the message as one line on stderr and exits with code 2.
    """


class NonFiniteLossError(RuntimeError):
    """The perturbation or training loss became NaN/inf; the last good checkpoint is kept."""


class DistributedError(RuntimeError):
    """A multi-process run lost a rank (it died, hung past --dist-timeout, or never joined)."""


class LostProcessesError(DistributedError):
    """A collective failed mid-run: the process group is broken and cannot be shut down cleanly."""
