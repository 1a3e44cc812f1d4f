"""The process group a CUDA run makes takes every collective the commands issue, CPU tensors and objects too.

On CUDA, distributed.setup() creates the group with distributed.backend_for(cuda); NCCL serves CUDA tensors
only, yet train, evaluate and --towers also exchange CPU tensors and pickled objects. No GPU here, so the
group is made from that very string with gloo standing in for nccl ("cpu:gloo,cuda:nccl" ->
"cpu:gloo,cuda:gloo"): whatever the CUDA group cannot carry fails here as it would there (a bare "nccl"
becomes "cuda:gloo", and the first CPU collective raises "No backend type associated with device type cpu").
One torchrun launch; its processes make the group and run the commands in it, as setup() joins a group
that is already there.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet import distributed
from conftest import write_image_folders


def cuda_group_backend() -> str:
    """The backend string a CUDA run's group gets, its CUDA backend swapped for gloo."""
    backend = distributed.backend_for(torch.device("cuda", 0))
    if ":" not in backend:   # a bare name serves its own device type only
        backend = f"cuda:{backend}"
    return backend.replace("nccl", "gloo")


# ---- the worker: run by torchrun as `python tests/test_cuda_group.py DATA OUT` ----

def _worker(data: Path, out: Path) -> None:
    import torch.distributed as td
    from torch.distributed.distributed_c10d import _world

    from alexnet import cli

    backend = cuda_group_backend()
    td.init_process_group(backend=backend)
    rank = td.get_rank()
    torch.set_num_threads(1)
    fast = ["--device", "cpu", "--workers", "0", "--precision", "fp32"]
    train = ["train", "--data", data, "--batch-size", "4", "--lr", "0.001", "--log-every", "1", *fast]
    commands = {
        # Stats summed over the processes, DDP, checkpoints with every process's RNG state (gathered objects).
        "train": [*train, "--epochs", "1", "--out", out / "run"],
        # The checks a resume makes (all_max), the stats found by rank 0 and broadcast.
        "resume": [*train, "--epochs", "2", "--out", out / "run", "--resume"],
        "evaluate": ["evaluate", "--checkpoint", out / "run" / "best.pt", "--data", data, "--batch-size", "2",
                     "--json", *fast],
        # A one-process command is refused under torchrun, in one line (exit 2), the group notwithstanding.
        "features": ["features", "--checkpoint", out / "run" / "best.pt", "--data", data,
                     "--out", out / f"features-{rank}.npz", *fast],
        # The towers' own groups (new_group) and their exchanges.
        "towers": [*train, "--towers", "2", "--epochs", "1", "--dropout", "0", "--out", out / "towers"],
    }
    codes = {name: cli.main([str(a) for a in args]) for name, args in commands.items()}
    groups = sorted({_world.pg_map[g][0] for g in _world.pg_map})   # the default group and the towers'
    if rank == 0:
        (out / "report.json").write_text(json.dumps({"codes": codes, "groups": groups}))
    td.destroy_process_group()


@pytest.mark.processes
def test_a_cuda_runs_process_group_carries_train_evaluate_and_towers(tmp_path):
    rng = np.random.default_rng(0)
    colours = {c: [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(4)] for c in ("red", "blue")}
    data = write_image_folders(tmp_path / "data", colours, size=(48, 40))
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        __file__, str(data), str(out)],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    report = json.loads((out / "report.json").read_text())
    assert report == {"codes": dict.fromkeys(("train", "resume", "evaluate", "towers"), 0) | {"features": 2},
                      "groups": ["cpu:gloo,cuda:gloo"]}
    assert [json.loads(x)["epoch"] for x in (out / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((out / "towers" / "metrics.jsonl").read_text())["epoch"] == 1
    assert not any((out / f"features-{rank}.npz").exists() for rank in (0, 1))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
