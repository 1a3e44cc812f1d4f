"""Small datasets the tests write themselves, the `alexnet` command as a subprocess or in-process, and the
comparison of two training runs that should be one."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.cores import usable_cores

# `make test` runs the tests without the `processes` mark on pytest-xdist workers, one per core (fewer where
# memory is short: a test's paper networks and checkpoints take up to about 5 GB), then the `processes`
# tests one at a time with every core. A worker, and every process its tests start, computes on its share
# of the cores: two workers each running a thread per core would fight over them.
GB_PER_WORKER = 5
CORES = usable_cores()
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    THREADS = max(1, CORES // WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    torch.set_num_threads(THREADS)


def _workers() -> int:
    try:
        gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):   # not said on this system: cores alone decide
        gb = GB_PER_WORKER * CORES
    return max(1, min(CORES, int(gb // GB_PER_WORKER)))


# Where the tests' folders go, unless TMPDIR says: /dev/shm, a folder in memory, where it has room for them
# and leaves the workers their memory. The suite writes tens of GB of paper-sized checkpoints and removes
# each test's as it passes; on a disk the kernel writes most of them out first, and the tests wait for it
# (the first round of `make test` took 7 min 50 s with its folders on a 2-core Xeon's disk, 5 min 48 s in
# /dev/shm; the second 7 min 17 s and 6 min 03 s). Both rounds held at most 4.3 GB there at once.
# Room asked for there: 6 GB, or 2 GB a worker (a module's folders hold up to 1.3 GB).
GB_FOR_FOLDERS = 6


def _memory_folder() -> str | None:
    shm = "/dev/shm"
    try:
        if not (os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK)):
            return None
        free = shutil.disk_usage(shm).free / 2**30
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 2**20
    except (OSError, StopIteration, ValueError):
        return None
    folders = max(GB_FOR_FOLDERS, 2 * _workers())
    return shm if free >= folders and available >= folders + GB_PER_WORKER * _workers() else None


if "TMPDIR" not in os.environ and (MEMORY_FOLDER := _memory_folder()):
    os.environ["TMPDIR"] = MEMORY_FOLDER   # the xdist workers and every process a test starts inherit it
    tempfile.tempdir = None                # gettempdir() may have cached the disk's


@pytest.hookimpl(optionalhook=True)   # pytest-xdist's hook: `-p no:xdist` still runs
def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per core this process may use, as many as memory holds."""
    return _workers()


# The `processes` tests write float64 runs of the paper network (1 GB a checkpoint) and held up to 4.8 GB
# of pytest's folders at once; with less free space they would fail one by one, each on a full disk.
GB_FREE_FOR_PROCESSES = 5


def pytest_collection_finish(session) -> None:
    if hasattr(session.config, "workerinput") or not any(i.get_closest_marker("processes") for i in session.items):
        return
    where = Path(session.config.option.basetemp or os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir())
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free / 2**30
    if free < GB_FREE_FOR_PROCESSES:
        pytest.exit(f"the `processes` tests need about {GB_FREE_FOR_PROCESSES} GB free in {where} for their runs' "
                    f"checkpoints; {free:.1f} GB are free (set TMPDIR, or --basetemp, to a larger disk)", returncode=2)


@pytest.fixture(scope="session", autouse=True)
def _torchrun_logs_here(tmp_path_factory):
    """torchrun makes a log folder in /tmp for every job it starts (torchelastic_*; dozens a session) and
    leaves it: PET_LOG_DIR (its --log-dir) puts them among this session's folders instead."""
    before = os.environ.get("PET_LOG_DIR")
    os.environ["PET_LOG_DIR"] = str(tmp_path_factory.mktemp("torchrun-logs"))
    yield
    if before is None:
        del os.environ["PET_LOG_DIR"]
    else:
        os.environ["PET_LOG_DIR"] = before


@pytest.fixture(scope="module", autouse=True)
def _module_folders_removed(request, tmp_path_factory):
    """A module's folders (its fixtures' data, runs and paper-sized checkpoints: up to 1.3 GB) are removed when
    it ends with every test passed; pytest alone would keep them all to the end of the session, 5 GB on disk
    for a whole `make test` (a full /tmp failed it). A module that failed keeps them to look at. Sound
    because there are no session-wide folders and a process runs one module at a time (xdist's loadfile)."""
    base = tmp_path_factory.getbasetemp()
    before, failed = set(base.iterdir()), request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for folder in set(base.iterdir()) - before:
            shutil.rmtree(folder, ignore_errors=True)


# Runs that should compute the same training (one process or two, one node or two, interrupted or not)
# are compared in float64 (`--precision fp64`). In float32 they drift apart: the elastic test's 12 steps
# ended 2e-3 (relative) from the uninterrupted run on AVX-512 kernels and up to 7e-3 on AVX2 ones, because
# a 1e-9 difference in the weights flips max-pool and ReLU decisions. In float64 the same runs ended within
# 2e-15 on both, so 1e-9 leaves a margin of 1e5 and still catches a lost or repeated step (1e-5 and more).
SAME_RUN = dict(rtol=1e-9, atol=1e-12)


def interpreted(module: str):
    """``module`` (a Triton kernel file) loaded with Triton's interpreter on, which must be on while its kernels
    are defined and while they run: CUDA's kernels on CPU tensors, on machines without a GPU. A generator for
    a module-scoped fixture to yield from; afterwards the module is loaded again as it was, so that later
    tests in the process (on a GPU, tests/test_cuda.py) get compiled kernels."""
    import importlib

    pytest.importorskip("triton")
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield importlib.reload(importlib.import_module(module))
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old
        importlib.reload(importlib.import_module(module))


def assert_close_in_parts(actual: torch.Tensor, expected: torch.Tensor, msg: str = "", part: int = 1 << 20,
                          **tolerance) -> None:
    """torch.testing.assert_close, a million values at a time: on the paper network's fc6 (302 MB in float64)
    its temporaries would each be fresh memory from the kernel, page by page (14 million page faults made
    the towers test spend twice its compute time in the kernel); a part's are reused."""
    assert actual.shape == expected.shape, (msg, actual.shape, expected.shape)
    for i, (a, b) in enumerate(zip(actual.reshape(-1).split(part), expected.reshape(-1).split(part))):
        torch.testing.assert_close(a, b, **tolerance, msg=lambda text: f"{msg}, values from {i * part}: {text}")


def assert_same_run(a: dict, b: dict) -> None:
    """Two state_dicts of float64 runs hold the same weights, to float64 rounding."""
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.float64, (k, a[k].dtype, b[k].dtype)
        assert_close_in_parts(a[k], b[k], msg=k, **SAME_RUN)


def run_main(*args) -> subprocess.CompletedProcess:
    """`alexnet ARGS...` in this process (3 s quicker than a fresh interpreter), output captured as text;
    for commands that start no processes of their own (give them --workers 0)."""
    import contextlib
    import io

    from alexnet.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:   # argparse's refusals
            code = e.code
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def evaluate_on_one_and_two(*args) -> tuple[dict, dict]:
    """`alexnet evaluate ARGS... --json` in one process and under torchrun with 2 (one thread each, batches
    of 2): the two JSON results, rank 0's for the pair."""
    import json
    import os

    args = ["evaluate", *map(str, args), "--json"]
    one = run_cli(*args)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "alexnet", *args, "--batch-size", "2"],
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-3000:]
    return json.loads(one.stdout), json.loads(two.stdout)


def run_cli(*args, timeout=600, **kw) -> subprocess.CompletedProcess:
    """`python -m alexnet ARGS...` in a fresh interpreter, output captured as text."""
    return subprocess.run([sys.executable, "-m", "alexnet", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def write_image_folders(root: Path, colours: dict[str, list[tuple[int, int, int]]],
                        splits=("train", "val"), size=(40, 30)) -> Path:
    """root/<split>/<class>/<i>.png, one flat-coloured image per colour (PNG: colours survive exactly)."""
    for split in splits:
        for cls, cols in colours.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i, c in enumerate(cols):
                Image.new("RGB", size, c).save(folder / f"{i:03d}.png")
    return root


def deny(monkeypatch, *folders: Path) -> None:
    """Listing ``folders`` fails as after chmod 000, for root too (whom permissions do not stop)."""
    denied = {os.fspath(f) for f in folders}
    for name in ("scandir", "listdir"):   # os.scandir for image_files, os.listdir for Path.iterdir
        def refuse(path=".", _list=getattr(os, name)):
            if os.fspath(path) in denied:
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return _list(path)
        monkeypatch.setattr(os, name, refuse)


@pytest.fixture
def tiny_folders(tmp_path):
    """Two classes of flat colours, 3 images each, in train and val."""
    rng = np.random.default_rng(0)
    colours = {cls: [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(3)] for cls in ("cat", "dog")}
    return write_image_folders(tmp_path / "data", colours), colours


# ImageNet as downloaded (data/imagenet.py), made from class folders DATA/{train,val}/<wnid>/<files>: the same
# files in each of ImageNet's layouts. Val's files are renamed ILSVRC2012_val_<n>.JPEG, numbered in class
# order then name order (a file that already has such a name keeps it), as the one flat folder needs.

def imagenet_val_names(folders: Path) -> dict[Path, str]:
    """Each val file of the class folders -> its flat ILSVRC2012_val_<n> name."""
    files = sorted((f for f in (folders / "val").glob("*/*")), key=lambda f: (f.parent.name, f.name))
    return {f: f.name if f.name.startswith("ILSVRC2012_val_") else f"ILSVRC2012_val_{n:08d}.JPEG"
            for n, f in enumerate(files, 1)}


def _names(folders: Path, wnids: list[str]) -> list[str]:
    from alexnet.data.folders import read_class_names
    return read_class_names(folders, wnids)


def tar_of(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar of these files, in this order."""
    import io
    import tarfile
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_300_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_devkit(folders: Path, out: Path, ids: dict[str, int] | None = None, extracted: bool = False,
                 truth: list[int] | None = None) -> Path:
    """ILSVRC2012_devkit_t12(.tar.gz) in ``out``: meta.mat with the classes under ``ids`` (ILSVRC2012_ID;
    default: reverse sorted order, so that it is never sorted-WordNet-id order) after two ancestors with
    children that sort among them, and the ground truth of val's files (or ``truth``)."""
    import io
    import tarfile

    import scipy.io
    wnids = sorted(p.name for p in (folders / "train").iterdir())
    ids = ids or {w: len(wnids) - i for i, w in enumerate(wnids)}
    words = dict(zip(wnids, _names(folders, wnids)))
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    n = len(wnids)
    rows = [(n + 1, "n00000000", "entity", "everything", 2, np.array([n + 2, 1], dtype=np.uint16), 3, 0),
            (n + 2, wnids[0] + "x", "a group", "some classes", n, np.arange(1, n + 1, dtype=np.uint16), 1, 0)]
    rows += [(ids[w], w, words[w], f"a {w}", 0, np.zeros((1, 0)), 0, 4) for w in sorted(wnids, key=ids.get)]
    synsets = np.zeros((len(rows), 1), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f, v in zip(fields, row):
            synsets[i, 0][f] = v
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    if truth is None:   # line n: the class of ILSVRC2012_val_<n>
        truth = [ids[f.parent.name] for f, _ in sorted(imagenet_val_names(folders).items(), key=lambda x: x[1])]
    files = {"ILSVRC2012_devkit_t12/COPYING": b"devkit",
             "ILSVRC2012_devkit_t12/data/meta.mat": meta.getvalue(),
             "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt":
                 "".join(f"{t}\n" for t in truth).encode()}
    out.mkdir(parents=True, exist_ok=True)
    if extracted:
        for name, data in files.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)
        return out / "ILSVRC2012_devkit_t12"
    with tarfile.open(out / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out / "ILSVRC2012_devkit_t12.tar.gz"


def write_imagenet_archives(folders: Path, out: Path, **devkit) -> dict[Path, Path]:
    """ILSVRC2012_img_train.tar (a tar of <wnid>.tar), ILSVRC2012_img_val.tar and the devkit in ``out``;
    returns each class-folder file -> the path its member has."""
    train_tar, val_tar = out / "ILSVRC2012_img_train.tar", out / "ILSVRC2012_img_val.tar"
    where, inner = {}, {}
    for folder in sorted((folders / "train").iterdir(), reverse=True):   # tars need not be in order
        files = sorted(folder.iterdir())
        inner[f"{folder.name}.tar"] = tar_of({f.name: f.read_bytes() for f in files})
        where |= {f: train_tar / f"{folder.name}.tar" / f.name for f in files}
    out.mkdir(parents=True, exist_ok=True)
    train_tar.write_bytes(tar_of(inner))
    val = imagenet_val_names(folders)
    val_tar.write_bytes(tar_of({name: f.read_bytes() for f, name in sorted(val.items(), key=lambda x: x[1])}))
    where |= {f: val_tar / name for f, name in val.items()}
    write_devkit(folders, out, **devkit)
    return where


def write_kaggle(folders: Path, out: Path, mapping_extra: str = "") -> dict[Path, Path]:
    """Kaggle's download in ``out``: ILSVRC/Data/CLS-LOC/{train/<wnid>/*, val/*}, LOC_val_solution.csv
    (each image's boxes, the first one's class the label) and LOC_synset_mapping.txt."""
    import shutil
    images = out / "ILSVRC" / "Data" / "CLS-LOC"
    shutil.copytree(folders / "train", images / "train")
    (images / "val").mkdir()
    wnids = sorted(p.name for p in (folders / "train").iterdir())
    where = {f: images / "train" / f.relative_to(folders / "train") for f in (folders / "train").glob("*/*")}
    rows = ["ImageId,PredictionString"]
    for k, (f, name) in enumerate(imagenet_val_names(folders).items()):
        shutil.copyfile(f, images / "val" / name)
        where[f] = images / "val" / name
        other = wnids[(wnids.index(f.parent.name) + 1) % len(wnids)] if k % 2 else f.parent.name
        rows.append(f"{name.rpartition('.')[0]},{f.parent.name} 1 2 30 40 {other} 5 6 20 30 ")
    rows[1:] = sorted(rows[1:], reverse=True)
    (out / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (out / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} {n}\n" for w, n in zip(wnids, _names(folders, wnids))) + mapping_extra)
    return where
