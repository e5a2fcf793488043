"""Errors a user can act on.

A :class:`UserError` is bad input: the CLI prints it as one line (``softmaso: error: WHERE:
MESSAGE``) and exits with code 2, without a traceback. Library code raises it wherever the
input came from a user (an option, a recipe key, a file) so that every entry point reports it
the same way.
"""


class UserError(Exception):
    """Bad user input: `where` names the option, key or file, `message` what is allowed."""

    exit_code = 2

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


class RunConflict(UserError):
    """A run directory already holds a run with a different config (another recipe version)."""


class RunBusy(UserError):
    """Another process holds the run's lock: it is training that run now."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a scheduler's stop): handled where Ctrl-C is, so a run stays resumable,
    with the exit code 143 (128 + SIGTERM)."""

    exit_code = 143


_stop: dict[str, str | None] = {"by": None}  # the signal that stopped us, until reported


def catch_stops() -> None:
    """From now on SIGTERM raises :class:`Terminated` and SIGINT KeyboardInterrupt in the main
    thread (the CLI calls it), each remembered until :func:`unreported_stop` reports it."""
    import signal

    def stop(signum, frame):
        _stop["by"] = signal.Signals(signum).name
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def unreported_stop() -> str | None:
    """The signal (SIGINT, SIGTERM) that stopped this process, once: None after it is said."""
    by, _stop["by"] = _stop["by"], None
    return by


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (for one-line reports), or "no message"."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else "no message"
