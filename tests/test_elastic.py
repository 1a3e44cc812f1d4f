"""torchrun's elastic side: two nodes on one machine, a worker killed and restarted, a node lost for good.

Every job runs as `python -m torch.distributed.run` in a session of its own, its output in a log file
(no pipe to fill up); the workers torchrun starts live in sessions of their own too, so each test's
processes carry a tag in their environment and the `launch` fixture kills every process holding it.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.config import resolve
from alexnet.train import train
from conftest import assert_same_run, write_image_folders

pytestmark = pytest.mark.processes

# Dropout off (its random numbers are per process); the rest is drawn per sample, so a global batch of 4
# holds the same images on one process or two. float64: see conftest.SAME_RUN.
FLAGS = ["--batch-size", "4", "--dropout", "0", "--lr", "0.001", "--workers", "0", "--precision", "fp64"]
WAIT = 300   # seconds: generous, for a loaded 2-core machine


@pytest.fixture(scope="module")
def more_data(tmp_path_factory):
    """2 classes x 8 flat colours (as test_train's): 16 images, 4 steps an epoch in global batches of 4."""
    rng = np.random.default_rng(1)
    colours = {c: [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(8)] for c in ("red", "blue")}
    return write_image_folders(tmp_path_factory.mktemp("data") / "more", colours, size=(48, 40))


@pytest.fixture(scope="module")
def one_process(more_data, tmp_path_factory):
    """One process's weights after 1 and 2 epochs: epoch -> a file of the model's state_dict. One run
    resumed after the first (exact: test_train shows it), instead of two runs from scratch."""
    run = tmp_path_factory.mktemp("one") / "run"
    saved = {}
    for epochs in (1, 2):
        config = resolve("paper", dict(data=str(more_data), out=str(run), epochs=epochs, batch_size=4, lr=0.001,
                                       dropout=0.0, workers=0, precision="fp64"))
        train(config, resume=epochs > 1, given={"epochs": epochs})
        saved[epochs] = run.parent / f"epoch{epochs}.pt"
        torch.save(weights(run / "last.pt"), saved[epochs])
    return saved


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (torchrun's workers, for an agent)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def tagged(tag: str) -> list[int]:
    """Every live process whose environment holds ALEXNET_TEST_TAG=tag (agents, workers, orphans)."""
    needle = f"ALEXNET_TEST_TAG={tag}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:   # gone, or not ours
                pass
    return pids


def kill_group(pid: int) -> None:
    for kill in (os.killpg, os.kill):   # the group it leads, if it leads one; else the process alone
        try:
            kill(pid, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture
def launch(tmp_path):
    """start(name, *torchrun_args) -> Popen of `python -m torch.distributed.run ARGS`, output in p.log;
    every process it led to is killed when the test ends, passed or failed."""
    tag = uuid.uuid4().hex
    started = []

    def start(name, *args):
        log = tmp_path / f"{name}.log"
        # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: a fresh store for the workers of every attempt. Shared (torch
        # 2.14's default), the agent keeps one store for all attempts, and a restarted group's gloo set-up
        # can read the addresses the dead group left in it: "Connection refused", or a hang.
        env = dict(os.environ, OMP_NUM_THREADS="1", LOGLEVEL="INFO", PYTHONUNBUFFERED="1",
                   TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", ALEXNET_TEST_TAG=tag)
        with open(log, "w") as out:
            p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *map(str, args)], stdout=out,
                                 stderr=subprocess.STDOUT, env=env, start_new_session=True)
        p.log = log
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:            # the agents first: none may start a worker after this
            kill_group(p.pid)
        for _ in range(50):
            left = tagged(tag)
            if not left:
                break
            for pid in left:
                kill_group(pid)
            time.sleep(0.1)
        for p in started:
            p.wait(timeout=60)


def log(*procs, tail=4000) -> str:
    return "\n".join(f"---- {p.log.name} (exit {p.poll()}) ----\n{p.log.read_text()[-tail:]}" for p in procs)


def output(*procs) -> str:
    return "\n".join(p.log.read_text() for p in procs)


def wait_until(condition, procs, what, timeout=WAIT):
    """Poll ``condition`` until true; fail (with the logs) if it takes too long or a job ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            pytest.fail(f"{what}: not seen\n{log(*procs)}")
        time.sleep(0.05)


def finish(procs, timeout=WAIT) -> list[int]:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after {timeout} s\n{log(*procs)}")
    return [p.returncode for p in procs]


def epochs_in(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def rendezvous(port: int, host: bool, *conf: str) -> list[str]:
    # is_host: the first agent serves the rendezvous store, the other connects (left to guess, both match
    # 127.0.0.1 and whichever binds first serves): the test kills the other, so the store outlives it.
    return ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "alexnet-test",
            "--rdzv-conf", ",".join([f"is_host={int(host)}", *conf])]


def test_two_nodes_on_one_machine_match_one_process(more_data, one_process, tmp_path, launch):
    run, port = tmp_path / "run", free_port()
    nodes = [launch(f"node{i}", "--nnodes", "2", "--nproc-per-node", "1", *rendezvous(port, i == 0),
                    "-m", "alexnet", "train", "--data", more_data, "--out", run, "--epochs", "1", *FLAGS)
             for i in range(2)]
    assert finish(nodes) == [0, 0], log(*nodes)
    out = output(*nodes)
    assert "on 2 x cpu" in out and out.count("group_world_size=2") == 2   # two nodes, one process each
    assert epochs_in(run) == [1]
    assert_same_run(torch.load(one_process[1], weights_only=True), weights(run / "last.pt"))


def test_a_worker_killed_mid_epoch_is_restarted_and_ends_with_the_uninterrupted_weights(more_data, one_process,
                                                                                       tmp_path, launch):
    run = tmp_path / "run"
    # No --resume: a restarted worker resumes by itself (TORCHELASTIC_RESTART_COUNT > 0).
    agent = launch("agent", "--standalone", "--nproc-per-node", "2", "--max-restarts", "1",
                   "-m", "alexnet", "train", "--data", more_data, "--out", run, "--epochs", "2", "--save-every", "2",
                   *FLAGS)
    wait_until(lambda: (run / "last.pt").exists(), [agent], "a first mid-epoch checkpoint")
    delay = random.uniform(0.0, 1.5)
    time.sleep(delay)                            # somewhere in a step, a checkpoint write, or validation
    workers = children(agent.pid)
    assert len(workers) == 2 and agent.poll() is None, log(agent)
    victim = random.choice(workers)
    os.kill(victim, signal.SIGKILL)
    context = f"killed worker {workers.index(victim)} of {workers} after {delay:.2f} s\n"

    assert finish([agent]) == [0], context + log(agent)
    out = agent.log.read_text()
    assert "will restart worker group" in out, context + log(agent)          # torchrun saw the failure
    assert f"alexnet train: resuming {run} on 2 x cpu" in out, context + log(agent)   # and resumed by itself
    # The survivor, if it met the dead one in a collective before torchrun stopped it, says so in one line.
    assert "Traceback" not in out, context + log(agent, tail=20000)
    assert epochs_in(run) == [1, 2], context + log(agent)
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "last.pt"]
    for path in run.glob("*.pt"):
        torch.load(path, weights_only=True)
    assert not list(run.glob(".*.tmp"))          # a write cut short is cleared by the restart
    assert_same_run(torch.load(one_process[2], weights_only=True), weights(run / "last.pt"))


def test_workers_of_an_agent_killed_outright_save_and_stop_and_their_run_resumes(more_data, one_process, tmp_path,
                                                                                    launch):
    # kill -9 (or the OOM killer) gives torchrun no chance to stop its workers; the kernel's parent-death signal
    # does: they stop as when torchrun stops them (else they train on, holding the folder from the next job).
    run = tmp_path / "run"
    command = ["--standalone", "--nproc-per-node", "2", "-m", "alexnet", "train", "--data", more_data, "--out", run,
               "--epochs", "1", "--log-every", "1", *FLAGS]
    agent = launch("agent", *command)
    wait_until(lambda: "step 1/4" in output(agent), [agent], "a first step")
    workers = children(agent.pid)
    assert len(workers) == 2, log(agent)
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait(timeout=60)
    deadline = time.monotonic() + WAIT
    while any(alive(pid) for pid in workers):
        if time.monotonic() > deadline:
            pytest.fail(f"the workers {workers} still ran {WAIT} s after their agent was killed\n{log(agent)}")
        time.sleep(0.05)
    out = output(agent)
    assert "alexnet train: stopped by SIGTERM (torchrun, which started this process, ended) at epoch 1, step" in out, \
        log(agent)
    assert "Traceback" not in out, log(agent, tail=20000)
    assert not (run / ".lock").exists() and not list(run.glob(".*.tmp"))
    torch.load(run / "last.pt", weights_only=True)

    # Resumed in one process (any number resumes a run): the same weights as the uninterrupted one's.
    train(resolve("paper", dict(data=str(more_data), out=str(run), epochs=1, batch_size=4, lr=0.001, dropout=0.0,
                                workers=0, precision="fp64", log_every=1)), resume=True)
    assert epochs_in(run) == [1]
    assert_same_run(torch.load(one_process[1], weights_only=True), weights(run / "last.pt"))


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs: not gone, and not a zombie that no one reaped (as in a container whose
    first process reaps no orphans)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_elastic_membership_goes_on_with_the_node_that_is_left(more_data, one_process, tmp_path, launch):
    run, port = tmp_path / "run", free_port()
    # Short timeouts: a node silent for 5 s is dead; a round short of nodes closes 3 s after the first joins.
    conf = ["last_call_timeout=3", "join_timeout=120", "keep_alive_interval=1", "keep_alive_max_attempt=5"]
    # --resume auto, as the train module recommends under --max-restarts: a late node joining restarts the
    # group without counting a restart (TORCHELASTIC_RESTART_COUNT stays 0), so it alone would not resume.
    # A checkpoint mid-epoch (step 2 of 4): the node is lost after it, the other resumes there.
    nodes = [launch(f"node{i}", "--nnodes", "1:2", "--nproc-per-node", "1", "--max-restarts", "3",
                    "--monitor-interval", "0.5", *rendezvous(port, i == 0, *conf),
                    "-m", "alexnet", "train", "--data", more_data, "--out", run, "--epochs", "2", "--save-every", "2",
                    "--resume", "auto", *FLAGS)
             for i in range(2)]
    kept, lost = nodes
    wait_until(lambda: "on 2 x cpu" in output(*nodes), nodes, "a world of two")
    before = (run / "last.pt").stat().st_mtime_ns if (run / "last.pt").exists() else None
    wait_until(lambda: (run / "last.pt").exists() and (run / "last.pt").stat().st_mtime_ns != before, nodes,
               "a checkpoint written by the world of two")
    # The lost node: its agent's process group and its worker's (torchrun starts workers in new sessions).
    workers = children(lost.pid)
    assert workers and lost.poll() is None, log(*nodes)
    kill_group(lost.pid)
    for pid in workers:
        kill_group(pid)
    seen = len(kept.log.read_text())

    assert finish([kept]) == [0], log(*nodes)
    out = kept.log.read_text()[seen:]                                     # what came after the loss
    assert "group_world_size=1" in out, log(*nodes)                       # it went on alone
    assert f"alexnet train: resuming {run} on 1 x cpu" in out, log(*nodes)
    assert epochs_in(run) == [1, 2], log(*nodes)
    assert_same_run(torch.load(one_process[2], weights_only=True), weights(run / "last.pt"))
