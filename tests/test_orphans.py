"""A torchrun worker is stopped (SIGTERM) when its agent ends, however it ends; any other process is left be."""

import os
import signal
import subprocess
import sys
import time

import pytest

# The agent: starts the worker from its main thread, as torchrun does, and waits to be killed.
AGENT = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
open(sys.argv[2] + ".pid", "w").write(str(worker.pid))
time.sleep(600)
"""

# The worker: says which signal reached it, if any, as its stop line would name it.
WORKER = """
import os, signal, sys, time
from alexnet.orphans import signal_name, stop_with_torchrun_agent
signal.signal(signal.SIGTERM, lambda signum, frame: (open(sys.argv[1], "w").write(signal_name(signum)), os._exit(0)))
stop_with_torchrun_agent()
open(sys.argv[1] + ".ready", "w").close()
time.sleep(600)
"""


def wait_for(condition, seconds):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("under_torchrun", [True, False])
def test_a_torchrun_worker_is_stopped_when_its_agent_is_killed_outright(tmp_path, under_torchrun):
    report = tmp_path / "signal"
    env = dict(os.environ)
    env.pop("TORCHELASTIC_RESTART_COUNT", None)
    if under_torchrun:
        env["TORCHELASTIC_RESTART_COUNT"] = "0"   # what torchrun sets in its workers' environment
    agent = subprocess.Popen([sys.executable, "-c", AGENT, WORKER, str(report)], env=env)
    worker = None
    try:
        assert wait_for(lambda: os.path.exists(f"{report}.ready") and os.path.exists(f"{report}.pid"), 120)
        worker = int(open(f"{report}.pid").read())
        agent.kill()   # kill -9: the agent can tell no one
        agent.wait()
        if under_torchrun:
            assert wait_for(report.exists, 10), "the worker went on after its agent was killed"
            # Its stop line says where the SIGTERM came from: no one sent it by hand.
            assert wait_for(lambda: report.read_text() == "SIGTERM (torchrun, which started this process, ended)", 10)
        else:
            assert not wait_for(report.exists, 1.0)   # no torchrun: the process is not ours to stop
            os.kill(worker, 0)
    finally:
        agent.kill()
        if worker is not None:
            try:
                os.kill(worker, signal.SIGKILL)
            except ProcessLookupError:
                pass
