"""The exceptions the CLI ends on without a traceback.

UserError means "the user asked for something that cannot be done": one line on stderr and exit status 2.
Stopped means a signal asked the command to end. Anything else is a bug and keeps its traceback.
"""

import signal


class UserError(Exception):
    """Bad input from the user: a missing path, an unreadable file, a wrong value."""


class Stopped(BaseException):
    """SIGINT, SIGTERM or SIGUSR1 ended the command (training: after finishing the step and writing last.pt);
    ``exit_code`` is 128 + the signal. A BaseException, as KeyboardInterrupt is: raised wherever the signal
    lands, it must pass the ``except Exception`` of code that only means to catch its own failures (an image
    decoder's, which would call the signal an unreadable image and go on)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def printable(text: str) -> str:
    """``text`` with control characters shown as escapes: a class name or file name from the disk must not
    break a one-line message in two, move the cursor or recolour the terminal it is printed to."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
