"""FolderLock: one holder at a time, and a folder left as it was found; where the per-machine cache lies."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from alexnet import files
from alexnet.errors import UserError
from alexnet.files import FolderLock
from alexnet.kernels import build
from alexnet.train import demo_data_dir

HOLD = """
import sys, time
from alexnet.files import FolderLock
lock = FolderLock(sys.argv[1])
print(lock.acquire(), flush=True)
time.sleep(60)
"""


def test_a_folder_is_held_by_one_process_and_left_as_it_was_found(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("kept")
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(mine)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "True"
        refused = FolderLock(mine)
        assert not refused.acquire() and refused.holder() == str(other.pid)
    finally:
        other.kill()
        other.wait()
    # The holder was killed (-9): its hold went with it, though its file is still there.
    lock = FolderLock(mine)
    assert lock.acquire()
    lock.release()
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    made = FolderLock(tmp_path / "new" / "run")
    assert made.acquire() and (tmp_path / "new" / "run" / ".lock").is_file()
    made.release()
    assert not (tmp_path / "new" / "run").exists()


HOLD_AND_FORK = """
import os, sys, time
from alexnet.files import FolderLock
lock = FolderLock(sys.argv[1])
lock.acquire()
if os.fork() == 0:        # a DataLoader worker, say: it lives on a while after its parent dies
    os.write(1, b"child\\n")    # past the fork hook: a kill before this would race the hook, not test it
    time.sleep(30)
    os._exit(0)
os.write(1, b"%d\\n" % os.getpid())    # one write each: print's may interleave with the child's
time.sleep(60)
"""


def test_a_killed_holders_forked_children_do_not_keep_its_hold(tmp_path):
    # kill -9 of `alexnet train --workers 2`: its workers held the folder for seconds more, and a job
    # requeued at once was refused in the name of the dead process.
    import os
    import signal

    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        said = sorted(holder.stdout.readline().strip() for _ in range(2))
        assert said == sorted([str(holder.pid), "child"])
        assert not FolderLock(tmp_path).acquire()
        holder.kill()
        holder.wait()
        lock = FolderLock(tmp_path)
        assert lock.acquire()        # at once, while the child still lives
        lock.release()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)


def test_a_hold_on_a_file_its_holder_removed_is_not_taken_for_the_folders(tmp_path, monkeypatch):
    # The race release() opens: B opens .lock, A removes it and lets go, B's flock then succeeds on a file
    # no longer in the folder. B must take a fresh .lock, or C could hold the folder at the same time.
    import os

    first = FolderLock(tmp_path)
    assert first.acquire()
    real_open, opened = os.open, []

    def open_then_lose_the_race(path, *args):
        fd = real_open(path, *args)
        if not opened:
            opened.append(fd)
            first.release()        # between this open and the flock that follows it
        return fd

    monkeypatch.setattr(os, "open", open_then_lose_the_race)
    second = FolderLock(tmp_path)
    assert second.acquire()
    monkeypatch.undo()
    assert os.fstat(second.fd).st_ino == os.stat(tmp_path / ".lock").st_ino
    third = FolderLock(tmp_path)
    assert not third.acquire()
    second.release()


WRITE_AND_HANG = """
import os, sys, time
from pathlib import Path
from alexnet.files import atomic_write

def write(tmp):
    Path(tmp).write_bytes(b"x" * 1000)
    os.write(1, b"%s\\n" % os.path.basename(tmp).encode())
    time.sleep(60)

atomic_write(sys.argv[1], write)
"""


def test_what_a_killed_writer_left_is_removed_by_the_next_write_and_a_live_ones_is_not(tmp_path):
    # kill -9 in the middle of writing a checkpoint or an export left its temporary file (up to a GB)
    # for good: nothing removed it but a person who knew to look for hidden files.
    import socket

    from alexnet.files import atomic_write

    target = tmp_path / "weights.safetensors"
    killed, live = (subprocess.Popen([sys.executable, "-c", WRITE_AND_HANG, str(target)], stdout=subprocess.PIPE,
                                     text=True) for _ in range(2))
    try:
        killed_tmp, live_tmp = killed.stdout.readline().strip(), live.stdout.readline().strip()
        assert killed_tmp.startswith(f".weights.safetensors.{socket.gethostname()}-{killed.pid}-")
        killed.kill()
        killed.wait()
        elsewhere = tmp_path / f".weights.safetensors.{socket.gethostname()}x-{killed.pid}-abc.tmp"
        elsewhere.write_bytes(b"another host's, on a shared file system")
        atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"new"))
        assert target.read_bytes() == b"new"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live_tmp, elsewhere.name])
    finally:
        for p in (killed, live):
            p.kill()
            p.wait()


def test_the_cache_is_alexnet_cache_else_xdgs_else_the_homes(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("ALEXNET_CACHE", raising=False)
    assert files.cache_root() == tmp_path / "home" / ".cache" / "alexnet"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert files.cache_root() == tmp_path / "xdg" / "alexnet"
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "mine"))
    assert files.cache_root() == tmp_path / "mine"
    assert demo_data_dir() == tmp_path / "mine" / "demo-seed0"
    assert build.cache_dir() == tmp_path / "mine" / "kernels"


def test_a_name_as_long_as_the_file_system_takes_is_written(tmp_path):
    # The temporary file's name adds this host, the process and random characters: cut short, not refused.
    longest = os.pathconf(tmp_path, "PC_NAME_MAX")
    path = tmp_path / ("w" * (longest - len(".safetensors")) + ".safetensors")
    files.atomic_write(path, lambda tmp: Path(tmp).write_text("weights"))
    assert path.read_text() == "weights" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_folder_on_the_way_that_is_a_file_or_a_dead_link_is_named(tmp_path):
    (tmp_path / "m.onnx").write_text("a network")
    with pytest.raises(UserError, match=rf"^{tmp_path}/m.onnx is a file, not a folder$"):
        files.atomic_write(tmp_path / "m.onnx" / "sub" / "x.safetensors", lambda tmp: None)
    (tmp_path / "dead").symlink_to("/nonexistent/dir")
    with pytest.raises(UserError, match=rf"^{tmp_path}/dead is a link to /nonexistent/dir, which does not exist$"):
        files.atomic_write(tmp_path / "dead" / "x.onnx", lambda tmp: None)
    assert (tmp_path / "m.onnx").read_text() == "a network"


def test_a_rewrite_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    # A private 0600 export, or last.pt and best.pt at every save, became world-readable (0644 under the
    # usual umask): the new file had a new file's permissions, where open() over the old one keeps its mode.
    path = tmp_path / "out.safetensors"
    files.atomic_write(path, lambda tmp: Path(tmp).write_text("first"))
    assert path.stat().st_mode & 0o777 == 0o666 & ~files._umask()   # a new file: as open() makes one
    for mode in (0o600, 0o640):
        path.chmod(mode)
        files.atomic_write(path, lambda tmp: Path(tmp).write_text("again"))
        assert path.read_text() == "again" and path.stat().st_mode & 0o777 == mode


def test_a_rewrite_keeps_the_group_of_the_file_it_replaces(tmp_path, monkeypatch):
    # A shared project folder's files belong to the team's group: a rewrite gave the new file this user's
    # own group (and 0660 kept from the old one then locked the team out of it).
    if os.name != "posix":
        pytest.skip("groups of files are POSIX's")
    path = tmp_path / "out.safetensors"
    files.atomic_write(path, lambda tmp: Path(tmp).write_text("first"))
    own = path.stat().st_gid
    # Root may give any group, with no entry in /etc/group; another user any group of theirs.
    others = [g for g in ([own + 1] if os.geteuid() == 0 else os.getgroups()) if g != own]
    if not others:
        pytest.skip("this user belongs to one group only, so there is no other group to give the file")
    os.chown(path, -1, others[0])
    path.chmod(0o660)
    files.atomic_write(path, lambda tmp: Path(tmp).write_text("again"))
    assert path.read_text() == "again" and path.stat().st_gid == others[0] and path.stat().st_mode & 0o777 == 0o660

    def not_allowed(*args):   # a group this user is not in: the file is still written, in this user's group
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chown", not_allowed)
    files.atomic_write(path, lambda tmp: Path(tmp).write_text("once more"))
    assert path.read_text() == "once more" and path.stat().st_gid == own


def test_a_safetensors_write_streams_the_tensors_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    # The file was made in memory first (safetensors.torch.save): the paper network's 244 MB held twice at the
    # peak. save_file writes from the tensors, but through a .tmpXXXXXX file of its own beside the one it is
    # given, which a kill -9 left under a name sweep_abandoned does not know: it gets a folder of its own,
    # named as atomic_write's temporary files are.
    import safetensors.torch
    import torch
    from safetensors import safe_open

    def in_memory(*args, **kwargs):
        raise AssertionError("the whole file was made in memory")

    given, save_file = [], safetensors.torch.save_file
    monkeypatch.setattr(safetensors.torch, "save", in_memory)
    monkeypatch.setattr(safetensors.torch, "save_file",
                        lambda t, name, **kw: given.append(name) or save_file(t, name, **kw))
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor([7], dtype=torch.int64)}
    path = tmp_path / "w.safetensors"
    for mode in (None, 0o640):   # a new file; a rewrite keeps the old one's mode
        if mode:
            path.chmod(mode)
        files.atomic_write(path, lambda tmp: files.save_safetensors(tensors, tmp, metadata={"format": "alexnet"}))
        assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
        assert path.stat().st_mode & 0o777 == (mode or 0o666 & ~files._umask())
        with safe_open(str(path), framework="pt") as f:
            assert f.metadata() == {"format": "alexnet"}
            assert all(torch.equal(f.get_tensor(k), t) for k, t in tensors.items()) and set(f.keys()) == {"w", "n"}
    assert len(given) == 2 and Path(given[0]).parent.name.startswith(f".w.safetensors.{files.maker()}-")

    # What a kill -9 during save_file leaves (its own .tmpXXXXXX in that folder) is swept by a later write.
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    left = tmp_path / f".w.safetensors.{files.maker().rsplit('-', 1)[0]}-{dead.pid}-abcdefgh.d"
    left.mkdir()
    (left / ".tmpAbC123").write_bytes(b"part of the network")
    monkeypatch.setattr(files, "_swept", set())   # swept once per folder in a process: as a later process would
    files.atomic_write(path, lambda tmp: files.save_safetensors(tensors, tmp, metadata={"format": "alexnet"}))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_a_safetensors_write_to_a_folder_named_in_another_encoding(tmp_path):
    import torch
    from safetensors import safe_open

    folder = tmp_path / os.fsdecode(b"lat\xe9")
    folder.mkdir()
    path = folder / "w.safetensors"
    files.atomic_write(path, lambda tmp: files.save_safetensors({"w": torch.ones(3)}, tmp, metadata={"k": "v"}))
    assert [p.name for p in folder.iterdir()] == ["w.safetensors"]
    with files.utf8_name(path) as name, safe_open(name, framework="pt") as f:
        assert f.metadata() == {"k": "v"} and torch.equal(f.get_tensor("w"), torch.ones(3))


UNDER_A_FILE_SIZE_LIMIT = """
import resource, sys, torch
from alexnet import files
from alexnet.errors import UserError
resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))
try:
    files.write_or_say(sys.argv[1], lambda tmp: files.save_safetensors({"w": torch.zeros(2**20)}, tmp, {}),
                       need=4 * 2**20)
except UserError as e:
    print(e)
"""


def test_a_safetensors_write_past_ulimit_f_is_one_line_and_leaves_nothing(tmp_path):
    r = subprocess.run([sys.executable, "-c", UNDER_A_FILE_SIZE_LIMIT, str(tmp_path / "w.safetensors")],
                       capture_output=True, text=True, timeout=60)
    said = (f"could not write {tmp_path / 'w.safetensors'}: it needs about 4 MB, over this process's file size "
            f"limit of 1.0 MB (ulimit -f); raise it\n")
    assert r.returncode == 0 and r.stdout == said, r
    assert list(tmp_path.iterdir()) == []
