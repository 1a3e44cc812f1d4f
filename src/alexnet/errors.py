"""The exceptions the CLI ends on without a traceback.

UserError means "the user asked for something that cannot be done": one line on stderr and exit status 2.
Stopped means a signal asked the command to end. Anything else is a bug and keeps its traceback.
"""

from alexnet.orphans import signal_name


class UserError(Exception):
    """Bad input from the user: a missing path, an unreadable file, a wrong value."""


class CutShort(OSError):
    """A file that ends before what it was indexed with (a shard truncated since it was checked, while a run
    reads it): bad input, said in one line with exit status 2 as a UserError is, not a bug's traceback."""


def one_line(e: Exception) -> str:
    """``e``'s message. One raised in a DataLoader worker comes again from torch with the worker's traceback
    in its message ("Caught UserError in DataLoader worker process 0. Original Traceback ..."): then the
    original message, the traceback's last line."""
    text = str(e)
    if text.startswith(f"Caught {type(e).__name__} in DataLoader worker process"):
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1].split(": ", 1)[-1]
    return text


class Stopped(BaseException):
    """SIGINT, SIGTERM or SIGUSR1 ended the command (training: after finishing the step and writing last.pt);
    ``exit_code`` is 128 + the signal. A BaseException, as KeyboardInterrupt is: raised wherever the signal
    lands, it must pass the ``except Exception`` of code that only means to catch its own failures (an image
    decoder's, which would call the signal an unreadable image and go on)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.exit_code = 128 + signum


def printable(text: str) -> str:
    """``text`` with control characters shown as escapes: a class name or file name from the disk must not
    break a one-line message in two, move the cursor or recolour the terminal it is printed to."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
