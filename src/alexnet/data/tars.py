"""Members of tar archives, read in place: ImageNet's ILSVRC2012_img_train.tar is a tar of 1,000 tars of JPEGs.

``index_tar`` walks the headers once (with ``nested``, those of the tars inside too) and keeps, for each
member, where its bytes lie in the outer file: an uncompressed tar stores a member's data as it is, so a
member of an inner tar starts at the inner tar's data offset plus its own offset in the inner tar. Every
image is then one pread() away, from any process, and nothing is extracted. No image bytes are held:
the index is a name and three integers a member.

A sample is named by a ``MemberPath`` such as /data/ILSVRC2012_img_train.tar/n01440764.tar/n01440764_10026.JPEG,
a Path whose stat() and open("rb") answer for the member. The code that reads image files (the decoder,
FixedSizeImages, prepare's record of its sources, pictures of samples) then reads members unchanged.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
import sys
import tarfile
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexnet.data.samples import Names, Samples
from alexnet.errors import UserError, printable
from alexnet.files import ReadAt

BLOCK = tarfile.BLOCKSIZE


class Archive(ReadAt):
    """One archive file, opened lazily by each process that reads it (DataLoader workers are forked or
    spawned after the index is built) and read with pread, which shares no file position.

    A sparse member (``tar --sparse``: a file with holes) stores only its data pieces, one after another;
    ``sparse`` maps where they start to their (offset, length) in the member, and ``member`` fills the
    holes with zeros, as tar does. Such members are rare, so the index stays three integers a member."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.sparse: dict[int, list[tuple[int, int]]] = {}

    def member(self, offset: int, size: int) -> bytes:
        """The ``size`` bytes of the member whose data starts at ``offset``."""
        pieces = self.sparse.get(offset)
        if pieces is None:
            return self.read(offset, size)
        stored, data = self.read(offset, sum(n for _, n in pieces)), bytearray(size)
        at = 0
        for start, n in pieces:
            data[start:start + n] = stored[at:at + n]
            at += n
        return bytes(data)

    def __getstate__(self) -> dict:
        return super().__getstate__() | {"sparse": self.sparse}


_ConcretePath = type(Path())   # PosixPath or WindowsPath: pathlib's classes that can be subclassed


class MemberPath(_ConcretePath):
    """A member of an archive as a Path: stat() gives its size and time, open("rb") its bytes.

    Paths derived from it (its parent, relative_to) are plain names again, as is any path that stat()
    or open() would look up on disk."""
    __slots__ = ("_member",)   # (Archive, offset, size, mtime)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        member = getattr(self, "_member", None)
        if member is None:
            return super().stat(follow_symlinks=follow_symlinks)
        size, mtime = member[2], member[3]
        return os.stat_result((stat.S_IFREG | 0o444, 0, 0, 1, 0, 0, size, mtime, mtime, mtime),
                              {"st_mtime_ns": mtime * 10**9})

    def open(self, mode: str = "r", buffering: int = -1, encoding=None, errors=None, newline=None):
        member = getattr(self, "_member", None)
        if member is None:
            return super().open(mode, buffering, encoding, errors, newline)
        if mode != "rb":
            raise ValueError(f"{self} lies inside an archive: it opens for reading bytes only (mode 'rb')")
        archive, offset, size, _ = member
        return io.BytesIO(archive.member(offset, size))

    def __reduce__(self):
        member = getattr(self, "_member", None)
        return (member_path, (str(self), *member)) if member else super().__reduce__()


def member_path(path: str, archive: Archive, offset: int, size: int, mtime: int) -> MemberPath:
    p = MemberPath(path)
    p._member = (archive, offset, size, mtime)
    return p


@dataclass
class Members:
    """Where each member's bytes lie in ``archive``; names are relative to it ("n01440764.tar/x.JPEG")."""
    archive: Archive
    names: Names
    offsets: np.ndarray   # int64, where each member's data starts in the archive
    sizes: np.ndarray
    mtimes: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def path(self, i: int) -> MemberPath:
        return member_path(f"{self.archive.path}/{self.names[i]}", self.archive, int(self.offsets[i]),
                           int(self.sizes[i]), int(self.mtimes[i]))

    def take(self, rows) -> Members:
        """These members only, in this order."""
        rows = np.asarray(rows, dtype=np.int64)
        return Members(self.archive, self.names.take(rows), self.offsets[rows], self.sizes[rows], self.mtimes[rows])


class MemberSamples(Samples):
    """A Split's samples, (MemberPath, label), made when asked for: ImageNet's 1.28M training images then
    cost their index entries, about 100 bytes each, rather than a Path object each."""

    def __init__(self, members: Members, labels) -> None:
        assert len(members) == len(labels)
        self.members, self.labels = members, np.asarray(labels, dtype=np.int64)

    def path(self, i: int) -> MemberPath:
        return self.members.path(i)

    def _pick(self, rows: np.ndarray) -> MemberSamples:
        out = object.__new__(MemberSamples)
        out.members = self.members.take(rows)
        return out


def index_tar(path: Path, keep: Callable[[str], bool], nested: bool = False,
              on_empty: Callable[[str, list[tuple[str, str, str]]], None] | None = None) -> Members:
    """The regular-file members of the tar at ``path`` whose names ``keep`` accepts, without reading their data.

    With ``nested``, a member named *.tar is opened as a tar in turn and its members (named
    "inner.tar/member") are kept instead, and ``on_empty`` is called with the name of one that has none to
    keep, and the links in it that ``keep`` accepts, left out as below (name, "symbolic" or "hard", target):
    a tar of links only is not empty to its owner. A truncated or damaged archive, outer or inner, is a UserError
    that names it: a header cut short, a member whose data would run past the end, or no end-of-archive
    block where the last member ends.

    A hard link to a file stored before it is that file again, as tar extracts it; a symbolic link is left
    out, as a linked file leading into its own split of image folders is (a link to a member would make
    its image a second sample; one out of the archive leads to nothing read here), and so is a hard link
    to no file stored before it (tar cannot extract it either): those ``keep`` accepts are named in a note.
    """
    archive = Archive(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror or e})") from None
    # Names go into packed parts as they come: a list of every name at once would cost ImageNet's 1.28M
    # str objects, freed after but left behind as fragmented memory.
    parts, names, offsets, sizes, mtimes = [], [], array("q"), array("q"), array("q")
    links: list[tuple[str, str, str]] = []
    outer = _members(archive, 0, size, str(path), links)
    linked_tar = next((link for link in links if nested and link[0].endswith(".tar")), None)
    if linked_tar:   # a class left out would shift the labels of every later class
        raise UserError(printable(f"{path}/{linked_tar[0]} is a {linked_tar[1]} link to {linked_tar[2]}, not a tar "
                                  f"of images: re-pack {path.name} with the tar it leads to in its place"))
    for name, offset, length, mtime in outer:
        if nested and name.endswith(".tar"):
            if offset in archive.sparse:   # its pieces are no one tar to read in place; tar files have no holes
                raise UserError(f"{path}/{name} is a sparse member, which is not supported inside {path.name}: "
                                f"re-pack {path.name} without --sparse")
            inner: list[tuple[str, str, str]] = []
            found = [(f"{name}/{m[0]}", *m[1:]) for m in _members(archive, offset, length, f"{path}/{name}", inner)]
            links += [(f"{name}/{link}", kind, target) for link, kind, target in inner]
            if on_empty is not None and not any(keep(m[0]) for m in found):
                on_empty(name, [link for link in inner if keep(f"{name}/{link[0]}")])
        else:
            found = [(name, offset, length, mtime)]
        for member in found:
            if keep(member[0]):
                names.append(member[0])
                offsets.append(member[1])
                sizes.append(member[2])
                mtimes.append(member[3])
        if len(names) >= 8192:
            parts.append(Names(names))
            names = []
    parts.append(Names(names))
    _note_links(path, [link for link in links if keep(link[0])])
    return Members(archive, Names.join(parts), *(np.frombuffer(a, dtype=np.int64) for a in (offsets, sizes, mtimes)))


def _note_links(path: Path, links: list[tuple[str, str, str]]) -> None:
    """One note for each kind of link index_tar left out, naming a few."""
    if not links or os.environ.get("LOCAL_RANK", "0") != "0":   # once a machine, under torchrun
        return
    for kind, why in (("symbolic", "a link to a member would make its image a second sample, and one out of the "
                                   "archive leads to nothing read here"),
                      ("hard", "tar cannot extract such a link either")):
        these = [f"{name} -> {target}" for name, k, target in links if k == kind]
        if these:
            n, more = len(these), f" and {len(these) - 3:,} more" if len(these) > 3 else ""
            what = f"{kind} link{'s' * (n != 1)}" + (f" to no file stored before {'them' if n > 1 else 'it'}"
                                                      if kind == "hard" else "")
            print(printable(f"note: {path} holds {n:,} {what} ({', '.join(these[:3])}{more}), left out: {why}"),
                  file=sys.stderr)


def _members(archive: Archive, start: int, length: int, label: str,
             links: list[tuple[str, str, str]]) -> list[tuple[str, int, int, int]]:
    """(name, offset of its data in the outer file, size, mtime) of each regular file of the tar at
    start..start+length, and of each hard link to one stored before it: the fast reading of plain headers,
    or tarfile's of any other (and of any damage). Links left out go into ``links`` as (name, "symbolic"
    or "hard", target)."""
    try:
        return _plain_members(archive, start, length)
    except _Unusual:
        return _tarfile_members(archive, start, length, label, links)


class _Unusual(Exception):
    """A header that _plain_members leaves to tarfile."""


_PLAIN_TYPES = {b"0": True, b"\0": True, b"5": False}   # regular file (new and old style), directory


def _plain_members(archive: Archive, start: int, length: int) -> list[tuple[str, int, int, int]]:
    """Members of a tar whose headers are all plain ustar/GNU ones (files and folders with short names,
    no pax or GNU long-name records): ImageNet's. About five times faster than tarfile, which decodes
    every field of every header; any other header, or any damage, raises _Unusual."""
    found, pos = [], 0
    while True:
        block = archive.read(start + pos, BLOCK, exact=False) if pos + BLOCK <= length else b""
        if block == bytes(BLOCK):
            return found
        if (len(block) < BLOCK or block[257:262] != b"ustar" or block[156:157] not in _PLAIN_TYPES
                or _octal(block[148:156]) != sum(block[:148]) + 8 * 32 + sum(block[156:])):
            raise _Unusual
        size, mtime = _octal(block[124:136]), _octal(block[136:148])
        if pos + BLOCK + size > length:
            raise _Unusual
        name = block[:100].split(b"\0", 1)[0]
        if block[257:265] == b"ustar\x0000" and block[345] != 0:   # POSIX ustar: a prefix holds the name's start
            name = block[345:500].split(b"\0", 1)[0] + b"/" + name
        if _PLAIN_TYPES[block[156:157]]:
            found.append((name.decode("utf-8", "surrogateescape"), start + pos + BLOCK, size, mtime))
        pos += BLOCK + -(-size // BLOCK) * BLOCK


def _octal(field: bytes) -> int:
    try:
        return int(field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:   # base-256 sizes (over 8 GB), garbage
        raise _Unusual from None


def _tarfile_members(archive: Archive, start: int, length: int, label: str,
                     links: list[tuple[str, str, str]]) -> list[tuple[str, int, int, int]]:
    found, end = [], 0
    stored: dict[str, int] | None = None   # each file's row in found by its normalised name, once a hard link asks
    try:
        with tarfile.open(fileobj=_Window(archive, start, length), mode="r:") as tar:
            while (info := tar.next()) is not None:
                tar.members.clear()   # keep no TarInfo: a flat val tar has 50,000
                # A sparse member's size is its size with the holes; only its pieces are stored.
                pieces = sum(n for _, n in info.sparse) if info.sparse is not None else info.size
                data_end = info.offset_data + pieces
                if info.isfile() and data_end > length:
                    raise tarfile.ReadError(f"{info.name} needs {data_end - length} bytes more than there are")
                end = info.offset_data + (-(-pieces // BLOCK) * BLOCK if info.isfile() else 0)
                if info.isfile():
                    if stored is not None:
                        stored[posixpath.normpath(info.name)] = len(found)
                    found.append((info.name, start + info.offset_data, info.size, int(info.mtime)))
                    if info.sparse is not None:
                        archive.sparse[start + info.offset_data] = [(at, n) for at, n in info.sparse if n]
                elif info.islnk():   # tar's own lookup: the target by its whole name in the archive
                    if stored is None:
                        stored = {posixpath.normpath(f[0]): row for row, f in enumerate(found)}
                    row = stored.get(posixpath.normpath(info.linkname))
                    if row is None:
                        links.append((info.name, "hard", info.linkname))
                    else:
                        stored[posixpath.normpath(info.name)] = len(found)
                        found.append((info.name, *found[row][1:]))
                elif info.issym():
                    links.append((info.name, "symbolic", info.linkname))
    except (tarfile.TarError, EOFError, ValueError) as e:
        raise UserError(f"{label} is truncated or not a tar ({e})") from None
    # tarfile takes a header cut short, or garbage, after the first member for the end of the archive;
    # an intact tar has a zero block right after its last member.
    if archive.read(start + end, min(BLOCK, max(0, length - end)), exact=False) != bytes(BLOCK):
        raise UserError(f"{label} is truncated or damaged: no end-of-archive block after its last member "
                        f"(at byte {end:,} of {length:,})")
    return found


class _Window(io.RawIOBase):
    """Bytes start..start+length of an archive as a read-only file: an inner tar, for tarfile."""

    def __init__(self, archive: Archive, start: int, length: int) -> None:
        self.archive, self.start, self.length, self.pos = archive, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        self.pos = pos + (0 if whence == io.SEEK_SET else self.pos if whence == io.SEEK_CUR else self.length)
        return self.pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.length - self.pos))
        data = self.archive.read(self.start + self.pos, n, exact=False)
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)
