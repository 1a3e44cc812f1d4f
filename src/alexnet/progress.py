"""Progress for long passes over data (prepare, the statistics pass, the demo set, features), on a
terminal and in a log.

On a terminal it is tqdm's bar. Without one (a cluster job's log, nohup, a pipe) tqdm would show nothing,
or, forced, redraw its bar with carriage returns; there a plain line comes every LOG_SECONDS instead, with
the same figures (done, total, elapsed, time left, rate), and one at the end of a pass that printed any.
A pass shorter than LOG_SECONDS prints nothing, as before.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm

LOG_SECONDS = 60.0
clock = time.monotonic


def progress_bar(iterable: Iterable | None = None, *, show: bool = True, **kwargs):
    """tqdm(iterable, **kwargs) on a terminal; LogLines without one; nothing with ``show`` False."""
    if not show:
        return tqdm(iterable, disable=True, **kwargs)
    if sys.stderr.isatty():
        return tqdm(iterable, **kwargs)
    return LogLines(iterable, **kwargs)


class LogLines:
    """What a tqdm bar would show, as a line on stderr every ``seconds``: the same calls (update, close,
    iteration, ``with``), tqdm's own formatting."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, seconds: float | None = None, **_ignored) -> None:
        self.iterable = iterable
        self.total = total if total is not None or iterable is None else getattr(iterable, "__len__", lambda: None)()
        self.desc, self.unit, self.n, self.initial = desc, unit, initial, initial
        self.seconds = LOG_SECONDS if seconds is None else seconds
        self.start = self.shown = clock()
        self.lines = 0
        self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = clock()
        if now - self.shown >= self.seconds:
            self.shown = now
            self._line(now)

    def close(self) -> None:
        if not self.closed and self.lines:
            self._line(clock())
        self.closed = True

    def _line(self, now: float) -> None:
        self.lines += 1
        text = tqdm.format_meter(self.n, self.total, now - self.start, prefix=self.desc,
                                 unit=self.unit, ascii=True, initial=self.initial)
        print(text, file=sys.stderr, flush=True)
