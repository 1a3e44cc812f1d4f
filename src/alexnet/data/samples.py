"""A split's samples, (source path, label) pairs, kept compact and made when asked for.

ImageNet's training split has 1.28M samples. As a list of (Path, label) tuples it costs about 450 bytes a
sample, 0.6 GB in every process that holds it, and DataLoader workers, which share the list with their
parent after a fork, copy it page by page as soon as they touch its objects (reference counts are written
on every read). Kept in a few arrays it costs the bytes of the names and a few integers, and reading it
writes nothing. ``Samples`` is the sequence interface; ``NamedSamples`` (a root and relative names) is the
prepared store's, ``tars.MemberSamples`` the archives'. Image folders keep plain lists: they are listed from
disk one file at a time anyway, and a sequence of either kind is read the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


def _equal_items(self, other) -> bool:
    """Equal to any sequence (a list too) of the same items in the same order."""
    if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
        return NotImplemented
    return len(self) == len(other) and all(a == b for a, b in zip(self, other))


class Samples(Sequence):
    """(path, label) for sample i, from arrays; subclasses say how a path is made and how rows are picked."""
    labels: np.ndarray   # int64 (N,)

    def path(self, i: int) -> Path:
        raise NotImplementedError

    def _pick(self, rows: np.ndarray) -> Samples:
        """The samples at ``rows`` (paths; labels are set by the caller)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} of {len(self)}")   # also ends iteration
        i %= len(self)
        return self.path(i), int(self.labels[i])

    def take(self, rows: Iterable[int]) -> Samples:
        """These samples only, in this order."""
        rows = np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows, dtype=np.int64)
        out = self._pick(rows)
        out.labels = self.labels[rows]
        return out

    def relabelled(self, table: Sequence[int]) -> Samples:
        """The same samples, label l becoming ``table[l]``."""
        out = self._pick(np.arange(len(self)))
        out.labels = np.asarray(table, dtype=np.int64)[self.labels]
        return out

    __eq__ = _equal_items
    __hash__ = None


def take(samples: Sequence, rows: Iterable[int]) -> Sequence:
    """``samples`` at ``rows``: compact again when they were compact."""
    return samples.take(rows) if isinstance(samples, Samples) else [samples[int(i)] for i in rows]


def relabelled(samples: Sequence, table: Sequence[int]) -> Sequence:
    """``samples`` with label l becoming ``table[l]``: compact again when they were compact."""
    return samples.relabelled(table) if isinstance(samples, Samples) else [(p, table[label]) for p, label in samples]


class Names(Sequence):
    """Strings held as one UTF-8 buffer and where each starts and ends: 16 bytes and the string's own each,
    where a list of str costs about 60 more, and nothing a forked reader's reference counting would copy."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        encoded = [name.encode("utf-8", "surrogateescape") for name in names]
        self._text = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
        self._starts = self._ends - np.array([len(e) for e in encoded], dtype=np.int64)

    @classmethod
    def join(cls, parts: Sequence[Names]) -> Names:
        """All of ``parts``' strings, in order."""
        out = cls()
        if parts:
            shifts = np.cumsum([0] + [len(p._text) for p in parts[:-1]], dtype=np.int64)
            out._text = np.concatenate([p._text for p in parts])
            out._starts = np.concatenate([p._starts + shift for p, shift in zip(parts, shifts)])
            out._ends = np.concatenate([p._ends + shift for p, shift in zip(parts, shifts)])
        return out

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._text[self._starts[i]:self._ends[i]].tobytes().decode("utf-8", "surrogateescape")

    def __iter__(self):
        text = self._text.tobytes()   # one copy, then plain slicing: a million names in a fraction of a second
        for a, b in zip(self._starts.tolist(), self._ends.tolist()):
            yield text[a:b].decode("utf-8", "surrogateescape")

    __eq__ = _equal_items
    __hash__ = None

    def take(self, rows: Iterable[int]) -> Names:
        """These strings only, in this order (sharing the buffer)."""
        rows = np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype=np.int64)
        out = Names()
        out._text, out._starts, out._ends = self._text, self._starts[rows], self._ends[rows]
        return out


class NamedSamples(Samples):
    """``root / name`` for names held as ``Names``: 24 bytes and the name's own a sample."""

    def __init__(self, root: Path, names: Names | Iterable[str], labels: Iterable[int]) -> None:
        self.root = Path(root)
        self.names = names if isinstance(names, Names) else Names(names)
        self.labels = np.fromiter(labels, dtype=np.int64, count=len(self.names))

    @classmethod
    def join(cls, parts: list[NamedSamples]) -> NamedSamples:
        """One sequence of ``parts``' samples, in order (all under the first part's root)."""
        labels = np.concatenate([p.labels for p in parts]) if parts else np.empty(0, np.int64)
        return cls(parts[0].root if parts else Path(), Names.join([p.names for p in parts]), labels)

    def path(self, i: int) -> Path:
        return self.root / self.names[i]

    def _pick(self, rows: np.ndarray) -> NamedSamples:
        out = object.__new__(NamedSamples)
        out.root, out.names = self.root, self.names.take(rows)
        return out
