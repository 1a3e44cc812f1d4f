"""Files as the project writes and reads them: written so that a crash, a kill or a full disk never leaves a
half-written one behind (atomic_write), read at given offsets from any process (ReadAt), and a folder held
by one process at a time (FolderLock)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from alexnet.errors import CutShort


def cache_root() -> Path:
    """Where the project keeps what it makes once per machine (compiled kernels, the demo set): $ALEXNET_CACHE,
    else $XDG_CACHE_HOME/alexnet, else ~/.cache/alexnet; where no home folder is known (a container run as a
    user without a password entry, HOME unset), spare_cache_root()."""
    if os.environ.get("ALEXNET_CACHE"):
        return Path(os.environ["ALEXNET_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "alexnet"
    try:
        return Path.home() / ".cache" / "alexnet"
    except (RuntimeError, KeyError):
        return spare_cache_root()


def spare_cache_root() -> Path:
    """This user's cache folder in the temporary folder: for a home that is unknown or cannot be written.

    Made private (0700) and used only while it is: the temporary folder is everyone's, and a folder of that
    name made by another user could hold a kernel of theirs for this process to load (PermissionError)."""
    if not hasattr(os, "getuid"):
        return Path(tempfile.gettempdir()) / "alexnet-cache"
    folder = Path(tempfile.gettempdir()) / f"alexnet-cache-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    held = os.lstat(folder)
    if not stat.S_ISDIR(held.st_mode) or held.st_uid != os.getuid() or held.st_mode & 0o077:
        raise PermissionError(errno.EACCES, "not a private folder of this user's (made by another?)", str(folder))
    return folder


def replaceable(path: str | Path, ours: Callable[[Path], bool], what: str) -> Path:
    """``path`` if a command may write there: free, or holding ``what`` (``ours`` says: an earlier output of
    the same kind). A checkpoint, a run's config.yaml, a dataset's classes.txt, any other file given as --out
    by a slip, is refused in one line, before the work, and never replaced."""
    from alexnet.errors import UserError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name")
    if path.exists():
        try:
            mine = ours(path)
        except (OSError, ValueError):
            mine = False
        if not mine:
            raise UserError(f"{path} exists and is not {what}; remove it or choose another --out")
    return path


@contextlib.contextmanager
def utf8_name(path: str | Path) -> Iterator[str]:
    """A name of ``path`` that readers taking names as UTF-8 (torch's mapped load, safetensors) can open.

    A folder named in another encoding (Latin-1 bytes from an old archive) reaches Python as surrogates,
    which those readers refuse; the file is then opened through a link with a plain name, made for the
    read and removed after it (a mapping made meanwhile stays valid). Not for writing: safetensors' save_file
    replaces the link itself."""
    name = os.fspath(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        yield name
        return
    with tempfile.TemporaryDirectory(prefix="alexnet-read-") as folder:
        link = os.path.join(folder, "file" + os.path.splitext(name)[1].encode("ascii", "replace").decode())
        os.symlink(os.path.abspath(name), link)
        yield link


def utf8_text(text: str) -> str:
    """``text`` as UTF-8 can hold it, for metadata that takes UTF-8 only (safetensors, ONNX): a path's bytes
    of another encoding, which reach Python as surrogates (see utf8_name), written as \\xe9."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def save_safetensors(tensors: dict, path: str, metadata: dict[str, str]) -> None:
    """A safetensors file of ``tensors`` at ``path`` (atomic_write's temporary file), written by safetensors
    straight from the tensors.

    save_file writes a temporary file of its own (.tmpXXXXXX) beside the one it is given and renames it
    there: given ``path`` itself, a kill -9 left that one for good (up to the whole network, 244 MB) under a
    name sweep_abandoned does not know. So it writes inside a folder of its own named after ``path``, which
    sweep_abandoned knows, and the file is then renamed over ``path``: the peak is the tensors alone (775 MB
    of RSS exporting the paper network, as loading it; 1,252 MB made in memory). Where a name is not UTF-8 (a
    folder named in another encoding, see utf8_name), which safetensors before 0.8 may refuse, the file is
    made in memory and written by Python: the bytes held twice at the peak while safetensors makes them."""
    from safetensors.torch import save, save_file

    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        Path(path).write_bytes(save(tensors, metadata=metadata))
        return
    own = os.path.splitext(path)[0] + ".d"   # not longer than ``path``: _temporary_name left it room for no more
    os.mkdir(own, 0o700)
    try:
        save_file(tensors, os.path.join(own, "weights"), metadata=metadata)
        os.replace(os.path.join(own, "weights"), path)
    finally:
        shutil.rmtree(own, ignore_errors=True)


def head(path: Path, size: int = 4096) -> bytes:
    """The first ``size`` bytes of ``path``: enough to tell what wrote it."""
    with open(path, "rb") as f:
        return f.read(size)


def tail(path: Path, size: int = 4096) -> bytes:
    """The last ``size`` bytes of ``path`` (all of it when shorter): where a PDF names its maker."""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - size))
        return f.read(size)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, then rename it over ``path``.

    The rename is atomic on POSIX and Windows, so readers see the old file or the new one, never a mix.
    """
    path = Path(path)
    make_folder(path.parent)
    name = _temporary_name(path)
    sweep_abandoned(path.parent, f".{name}.")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.{maker()}-", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        _keep_group(tmp, path)
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mode_for(path: Path) -> int:
    """The permissions open() would leave ``path`` with: those of the file it replaces (a private 0600
    checkpoint stays private), else those of a new file under the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode) & 0o777
    except OSError:   # none there (or one this process cannot see): a new file
        return 0o666 & ~_umask()


def _keep_group(tmp: str, path: Path) -> None:
    """The group of the file ``tmp`` replaces, as open() over it would keep it: a new file takes this user's
    group, which in a shared project folder (setgid, or a file given to the team's group) would lock the team
    out of it. Where this user may not give that group (not one of theirs), the new file keeps its own."""
    try:
        old = os.stat(path).st_gid
        if os.stat(tmp).st_gid != old:
            os.chown(tmp, -1, old)
    except (OSError, AttributeError):   # none there (a new file); not allowed; no chown (Windows)
        pass


def make_folder(folder: Path) -> None:
    """``folder`` and its parents, as mkdir makes them; where a part of it is a file, or a link to nothing,
    one line naming that part (mkdir's "File exists" names neither)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        from alexnet.errors import UserError

        for part in reversed([folder, *folder.parents]):
            if part.is_symlink() and not part.exists():
                raise UserError(f"{part} is a link to {os.readlink(part)}, which does not exist") from None
            if part.exists() and not part.is_dir():
                raise UserError(f"{part} is a file, not a folder") from None
        raise


def _temporary_name(path: Path) -> str:
    """``path``'s name, cut short where the temporary file's name (it, this host and process, 8 random
    characters) would pass the file system's longest name: a legal 250-character name stays writable."""
    try:
        longest = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        longest = 255
    room = longest - len(os.fsencode(f"..{maker()}-XXXXXXXX.tmp"))
    raw = os.fsencode(path.name)
    return path.name if len(raw) <= room else os.fsdecode(raw[:max(room, 1)])


def maker() -> str:
    """This host and process, written into the names of temporary files and folders so that a later run can
    tell one whose maker was killed (kill -9, an out-of-memory kill, a power cut) from one still being made."""
    return f"{socket.gethostname()}-{os.getpid()}"


_swept: set[tuple[str, str]] = set()


def sweep_abandoned(folder: Path, prefix: str) -> None:
    """Remove the entries of ``folder`` named ``prefix`` + maker() of a process of this host that no longer
    runs: a checkpoint's or an export's temporary file (up to a GB), a half-made demo set. Once per folder
    and prefix in a process. Those of live processes, or of other hosts (a shared file system), are left."""
    if os.name != "posix" or (str(folder), prefix) in _swept:
        return   # elsewhere there is no os.kill(pid, 0) to ask whether a process lives
    _swept.add((str(folder), prefix))
    made_by = re.compile(re.escape(prefix + socket.gethostname()) + r"-(\d+)-")
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(prefix)]
    except OSError:
        return
    for entry in entries:
        found = made_by.match(entry.name)
        if found and not _runs(int(found.group(1))):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                Path(entry.path).unlink(missing_ok=True)


def _runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # EPERM: it runs, as another user
        return True
    return True


def write_or_say(path: str | Path, write: Callable[[str], None], need: int = 0) -> None:
    """atomic_write, with a write that fails (a full disk, say) said in one line (UserError) naming ``path``
    and that the previous file is unchanged. The writers report it in their own words: OSError; torch's
    RuntimeError; safetensors' SafetensorError. ``need``: about how many bytes the file takes."""
    from alexnet.errors import UserError

    try:
        atomic_write(path, write)
        return
    except Exception as e:
        if not isinstance(e, (OSError, RuntimeError)) and type(e).__name__ != "SafetensorError":
            raise
        if isinstance(e, OSError) and e.strerror and e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            # Its own words, without the temporary file's name str(e) would give (a read-only folder;
            # /proc, where the free space is 0 and not the reason).
            raise UserError(f"could not write {path} ({e.strerror}){_kept(path)}") from None
        code = getattr(e, "errno", None)
        text = (e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip()) or type(e).__name__
    # Measured here, past the except: until then its traceback holds the writer (torch's), which holds the
    # removed temporary file open, and its blocks count as used.
    folder = Path(path).parent
    free = shutil.disk_usage(folder).free if folder.is_dir() else 0
    largest = _file_size_limit()
    if largest is not None and (code == errno.EFBIG or need > largest):
        raise UserError(f"could not write {path}: it needs about {max(need, 1) / 1e6:,.0f} MB, over this process's "
                        f"file size limit of {largest / 1e6:,.1f} MB (ulimit -f); raise it{_kept(path)}")
    if code == errno.ENOSPC or "No space left" in text or free < need:
        raise UserError(f"could not write {path}: no space left on the device (it needs about "
                        f"{max(need, 1) / 1e6:,.0f} MB, {free / 1e6:,.0f} MB are free){_kept(path)}")
    raise UserError(f"could not write {path} ({text.splitlines()[0]}){_kept(path)}")


def _file_size_limit() -> int | None:
    """The largest file this process may write (ulimit -f), in bytes; None where there is no limit."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def _kept(path: str | Path) -> str:
    return "; the previous file is unchanged" if Path(path).exists() else ""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_PREADV = hasattr(os, "preadv")   # straight into the buffer; where it is missing, one copy more


def _pread(fd: int, size: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)   # Windows: no pread, but the descriptor is this process's alone
    return os.read(fd, size)


class ReadAt:
    """A file read at given offsets (pread), from any process: each opens it on its first read (DataLoader
    workers, forked or spawned, start after the object is made), and no file position is shared.

    Reading rather than memory-mapping keeps what was read out of the reader's resident memory: a process
    that reads a 252 GB store once through maps would count all of it as its own (the kernel may reclaim
    those pages, but every report of the process's memory, and a container's limit, counts them)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._pid: int | None = None

    def _descriptor(self) -> int:
        """This process's descriptor of the file, opened again if it was closed to keep others open."""
        pid = os.getpid()
        if self._pid == pid and self._fd is not None:
            _OPEN.move_to_end(id(self))
            return self._fd
        self._fd, self._pid = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0)), pid
        _OPEN.opened(self)
        return self._fd

    def _close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def read(self, offset: int, size: int, exact: bool = True) -> bytes:
        with _OPEN.lock:   # no other thread closes the descriptor (and reuses its number) during the read
            data = _pread(self._descriptor(), size, offset)
        if exact and len(data) != size:
            raise CutShort(f"{self.path} ends {len(data)} bytes into a read of {size} at byte {offset} "
                          "(cut short since it was written or indexed?)")
        return data

    def read_into(self, offset: int, buffer) -> None:
        """Fill ``buffer`` (a writable, C-contiguous array or memoryview) with the bytes at ``offset``."""
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view):   # a read may return less than asked for; only 0 means the end
            with _OPEN.lock:
                if _PREADV:
                    n = os.preadv(self._descriptor(), [view[done:]], offset + done)
                else:
                    data = _pread(self._descriptor(), len(view) - done, offset + done)
                    n = len(data)
                    view[done:done + n] = data
            if n == 0:
                raise CutShort(f"{self.path} ends {done} bytes into a read of {len(view)} at byte {offset} "
                              "(cut short since it was written or indexed?)")
            done += n

    def __getstate__(self) -> dict:
        return {"path": self.path, "_fd": None, "_pid": None}

    def __del__(self) -> None:
        try:
            with _OPEN.lock:
                _OPEN.forget(self)
                self._close()
        except (AttributeError, TypeError, OSError):   # at the interpreter's exit, the module may be gone first
            pass


class _OpenFiles:
    """The files ReadAt holds open in this process, at most a quarter of its limit on open files (ulimit -n):
    reading past it closes the least recently read, which opens again when next read. With one descriptor a
    file for good, an ImageNet store (1,301 shards) failed a few batches into training, in every loader
    worker, under the usual limit of 1,024, and its `prepare` at the statistics pass after every image."""

    def __init__(self) -> None:
        self.lock = threading.RLock()   # reentrant: a ReadAt collected during a read closes itself here
        self.files: OrderedDict[int, weakref.ref[ReadAt]] = OrderedDict()   # least recently read first
        self.pid = os.getpid()
        self.most = _most_open()

    def _this_process(self) -> None:
        if self.pid != os.getpid():   # a forked worker: its parent's files are not its own to close
            self.files.clear()
            self.pid = os.getpid()

    def opened(self, file: ReadAt) -> None:
        self._this_process()
        self.files[id(file)] = weakref.ref(file)
        while len(self.files) > self.most:
            _, ref = self.files.popitem(last=False)
            other = ref()
            if other is not None:
                other._close()

    def move_to_end(self, key: int) -> None:
        self._this_process()
        if key in self.files:
            self.files.move_to_end(key)

    def forget(self, file: ReadAt) -> None:
        self._this_process()
        ref = self.files.get(id(file))
        if ref is not None and ref() in (file, None):
            del self.files[id(file)]


def _most_open() -> int:
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            soft = 4096
    except (ImportError, OSError, ValueError):   # no such limit (Windows: 8,192 handles for the C runtime)
        soft = 1024
    return max(4, min(soft // 4, 1024))


_OPEN = _OpenFiles()


class FolderLock:
    """An exclusive hold on a folder for one process at a time: ``acquire()``, later ``release()``.

    An advisory lock (flock) on FOLDER/.lock, which the system drops when its process ends however it
    ends, so a run killed with kill -9 leaves nothing stale for the next one to clear. The file keeps the
    holder's pid and its command (``what``: "train", "prepare") for the message of the one refused. What
    the lock made (the file, and the folder if it had to make it and nothing else was written there) is
    removed on release, so a refused or failed command leaves a folder as it found it. Where flock does not
    exist (Windows) nothing is held.
    """

    NAME = ".lock"
    # Descriptors of the holds this process has: a forked child (a DataLoader worker, a pool's process)
    # closes its copies at once, else it would keep the hold after its parent was killed, until it noticed
    # and exited (seconds), and a job requeued at once would be refused in the name of a dead process.
    _held: set[int] = set()
    _fork_hook = False

    def __init__(self, folder: str | Path, what: str = "") -> None:
        self.folder = Path(folder)
        self.what = what
        self.fd: int | None = None
        self.created = False
        self.token = ""

    def acquire(self) -> bool:
        """True if this process now holds the folder, False if another process does; OSError if the
        folder cannot be made or written."""
        try:
            import fcntl
        except ImportError:
            return True
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            # The holder before us may have removed the file between our open and our flock: a lock on
            # that file holds nothing, so take the one that is there now.
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        # The pid for the message of one refused; a token that no other hold writes, by which other
        # processes (a run's ranks on other nodes) can tell whether they see this very folder.
        self.token = os.urandom(8).hex()
        os.write(fd, f"{os.getpid()}\n{self.token}\n{self.what}\n".encode())
        os.fsync(fd)   # on a network file system, there for other nodes to read
        self.fd = fd
        FolderLock._held.add(fd)
        if not FolderLock._fork_hook and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=FolderLock._let_go_in_child)
            FolderLock._fork_hook = True
        return True

    @staticmethod
    def _let_go_in_child() -> None:
        for fd in FolderLock._held:   # the copy only: the parent's descriptor keeps the hold
            try:
                os.close(fd)
            except OSError:
                pass
        FolderLock._held.clear()

    def holder(self) -> str:
        """The pid written by the process holding the lock, or "" if unknown."""
        return self._written()[0]

    def seen_token(self) -> str:
        """The token of the hold on the folder as this process sees it ("" where it sees none)."""
        return self._written()[1]

    def refusal(self) -> str:
        """What a refused process says of the holder: "another alexnet train (pid 766)"; "another alexnet
        command" where the holder wrote less (an older version's lock)."""
        pid, _, what = self._written()
        return f"another alexnet {what or 'command'}" + (f" (pid {pid})" if pid else "")

    def _written(self) -> tuple[str, str, str]:
        try:
            lines = (self.folder / self.NAME).read_text().split()
        except OSError:
            lines = []
        pid, token, what = (lines + ["", "", ""])[:3]
        return pid, token, what

    def in_place(self) -> bool:
        """Whether the folder held is still where it was: not moved or removed (its lock file, there, is the
        one this process holds). A write after a move would make a new folder beside the moved one."""
        if self.fd is None:
            return True
        try:
            there, held = os.stat(self.folder / self.NAME), os.fstat(self.fd)
        except OSError:
            return False
        return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        if self.fd is None:
            return
        if self.in_place():
            # Removed while still held: a process that opened it meanwhile sees another file there and retries.
            (self.folder / self.NAME).unlink(missing_ok=True)
            try:
                if self.created and not any(self.folder.iterdir()):
                    self.folder.rmdir()
            except OSError:
                pass
        FolderLock._held.discard(self.fd)
        os.close(self.fd)   # closing drops the lock
        self.fd = None
