"""The machine's limits that the data loader's processes run into, each one line naming the limit and the
remedy (exit 2), not a traceback from inside torch: open files, file size, shared memory."""

import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import write_image_folders


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    return write_image_folders(root / "data", {"a": [(200, 10, 10)] * 12, "b": [(10, 10, 200)] * 12}, size=(64, 48))


def train_under(limit, value, data, out, workers):
    def lower():
        resource.setrlimit(limit, (value, resource.getrlimit(limit)[1]))
    return subprocess.run([sys.executable, "-m", "alexnet", "train", "--preset", "demo", "--data", str(data),
                           "--out", str(out), "--epochs", "1", "--batch-size", "4", "--workers", str(workers)],
                          capture_output=True, text=True, timeout=300, preexec_fn=lower)


def one_line(r, *said):
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and all(s in errors[0] for s in said), r.stderr
    assert "Exception ignored" not in r.stderr, r.stderr


def test_too_few_open_files_for_the_loaders_processes_is_one_line(data, tmp_path):
    # 16 loader processes need more descriptors than 40 (before the first batch or in it, depending on the
    # machine): either way the same line.
    one_line(train_under(resource.RLIMIT_NOFILE, 40, data, tmp_path / "run", 16),
             "too many open files", "ulimit -n 40", "fewer --workers")


def test_a_file_size_limit_under_a_batch_in_shared_memory_is_one_line(data, tmp_path):
    # A batch of 4 fixed 256x256 images is 786 KB: over a 500 KB limit on the files the loader's processes
    # pass it through.
    one_line(train_under(resource.RLIMIT_FSIZE, 500 * 1024, data, tmp_path / "run", 2),
             "file size limit (ulimit -f 500)", "--workers 0")


def test_a_full_shared_memory_is_one_line_saying_what_to_do(data, tmp_path):
    # As in a container (Docker gives /dev/shm 64 MB): here 512 KB, in a mount namespace of its own.
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("no mount namespace to give /dev/shm a size in (needs unshare and the right to use it)")
    # The tests' folders may lie in /dev/shm itself, which the small one hides: the run works from a disk's.
    with tempfile.TemporaryDirectory(dir="/tmp") as disk:
        shutil.copytree(data, Path(disk) / "data")
        command = (f"mount -t tmpfs -o size=512k tmpfs /dev/shm && exec {sys.executable} -m alexnet train --preset "
                   f"demo --data {disk}/data --out {disk}/run --epochs 1 --batch-size 4 --workers 2")
        r = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, TMPDIR=disk))
    one_line(r, "shared memory", "/dev/shm", "is full", "--workers 0")
