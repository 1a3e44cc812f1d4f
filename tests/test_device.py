"""One rule for the device and the autocast dtype (alexnet.device), on this machine's CPU, and as it
would go on a machine with GPUs (torch.cuda's answers replaced)."""

import pytest
import torch

from alexnet import distributed
from alexnet.device import device_and_dtype, pick_device
from alexnet.errors import UserError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answers on a machine without CUDA")


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda as it answers on a machine with two GPUs (no GPU is touched: torch.device is only a name)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@no_cuda
@pytest.mark.parametrize("setting", ["cpu", "auto"])
def test_cpu_and_auto_give_the_cpu_without_cuda(setting):
    assert pick_device(setting) == torch.device("cpu")
    assert pick_device(setting, local_rank=3) == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("setting", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_a_user_error(setting):
    with pytest.raises(UserError, match="sees no CUDA device") as e:
        pick_device(setting)
    assert len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("setting", ["gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "cpu:0", ""])
def test_an_unknown_setting_is_a_user_error(setting):
    with pytest.raises(UserError, match="unknown device") as e:
        pick_device(setting)
    assert len(str(e.value).splitlines()) == 1


def test_cuda_follows_the_local_rank_and_an_index_wins_over_it(two_gpus):
    assert pick_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert pick_device("auto", local_rank=3) == torch.device("cuda", 1)   # more processes than GPUs: wrap
    assert pick_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    assert pick_device("cpu", local_rank=1) == torch.device("cpu")


def test_an_index_beyond_the_gpus_is_a_user_error(two_gpus):
    with pytest.raises(UserError, match="cuda:0 to cuda:1") as e:
        pick_device("cuda:2")
    assert len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("precision,dtype", [("fp32", None), ("bf16", torch.bfloat16)])
def test_device_and_dtype_on_the_cpu(precision, dtype):
    assert device_and_dtype("cpu", precision) == (torch.device("cpu"), dtype)


def test_auto_precision_is_bf16_only_on_gpus_that_compute_it(two_gpus, monkeypatch):
    # NVIDIA's bf16 tensor cores come with compute capability 8 (Ampere). torch.cuda.is_bf16_supported() says yes
    # on a V100 or T4 too (bf16 emulated, far slower than fp16), and of the current GPU, not the run's: "auto"
    # took bf16 there, and fp16 (the tensor cores those GPUs have) never.
    from types import SimpleNamespace

    from alexnet.precision import autocast_dtype

    majors = {0: 7, 1: 8}   # a V100 beside an A100
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(major=majors[i]))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.version, "hip", None)
    assert autocast_dtype("auto", torch.device("cuda", 0)) == torch.float16
    assert autocast_dtype("auto", torch.device("cuda", 1)) == torch.bfloat16
    assert autocast_dtype("auto", torch.device("cuda")) == torch.bfloat16       # the current GPU: cuda:1
    assert autocast_dtype("bf16", torch.device("cuda", 0)) == torch.bfloat16    # asked for: as asked
    monkeypatch.setattr(torch.version, "hip", "6.2")                              # AMD's GPUs compute bf16
    assert autocast_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16


def test_fp16_on_the_cpu_is_a_user_error():
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        device_and_dtype("cpu", "fp16")


def test_distributed_uses_the_same_rule():
    assert distributed.pick_device is pick_device


@pytest.mark.parametrize("command", [["train"], ["evaluate"], ["predict"], ["features"], ["viz", "neighbors"],
                                     ["bench", "train"]])
def test_every_command_takes_the_same_device_settings(command, capsys):
    from alexnet.cli import build_parser

    parser = build_parser()
    required = {"evaluate": ["--checkpoint", ".", "--data", "."], "predict": ["--checkpoint", ".", "x.jpg"],
                "features": ["--checkpoint", ".", "--data", ".", "--out", "f.npz"],
                "viz": ["--checkpoint", ".", "--data", "."]}.get(command[0], [])
    for setting in ("auto", "cpu", "cuda", "cuda:1"):
        assert parser.parse_args([*command, *required, "--device", setting]).device == setting
    with pytest.raises(SystemExit):
        parser.parse_args([*command, *required, "--device", "gpu"])
    assert "unknown device 'gpu'; use auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_one_gpu_for_every_process_of_a_machine_is_refused(two_gpus, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(UserError, match="use --device cuda"):
        distributed.setup("cuda:1")


@pytest.mark.parametrize("env, said", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE is 2 but RANK, MASTER_ADDR, MASTER_PORT are not set: a world of processes is "
                          "torchrun's to start"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}, "WORLD_SIZE is 2 but MASTER_PORT is not set"),
    ({"WORLD_SIZE": "two"}, "the environment variable WORLD_SIZE is 'two', not a process count"),
    ({"LOCAL_RANK": "-1"}, "the environment variable LOCAL_RANK is '-1'"),
    # A world of none, or a rank beyond the world: each took a batch share that is not there (IndexError), or
    # made the lone process think it was not the main one (evaluate said nothing).
    ({"WORLD_SIZE": "0"}, "the environment variable WORLD_SIZE is '0', not a process count"),
    ({"RANK": "1"}, r"RANK is 1 but WORLD_SIZE is not set \(one process\): ranks run from 0 to WORLD_SIZE - 1"),
    ({"RANK": "1", "WORLD_SIZE": "1"}, "RANK is 1 but WORLD_SIZE is 1: "),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}, "RANK is 2 but WORLD_SIZE is 2"),
    ({"LOCAL_RANK": "1"}, r"LOCAL_RANK is 1 but this machine runs 1 process \(WORLD_SIZE not set\)"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
      "MASTER_PORT": "1"}, r"LOCAL_RANK is 1 but this machine runs 1 process \(WORLD_SIZE 2, LOCAL_WORLD_SIZE 1\)"),
    ({"LOCAL_WORLD_SIZE": "0"}, "the environment variable LOCAL_WORLD_SIZE is '0'")])
def test_a_world_left_in_the_environment_without_torchrun_is_one_line(monkeypatch, env, said):
    _clear_world(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed.td, "init_process_group", _no_group)   # else it waits for the others
    with pytest.raises(UserError, match=f"^{said}"):
        distributed.setup("cpu")


def _no_group(*args, **kwargs):
    raise AssertionError("setup() joined a process group")


def _clear_world(monkeypatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_stray_rank_stops_train_and_evaluate_in_one_line(command, tiny_folders, tmp_path, monkeypatch):
    from conftest import run_main

    data, _ = tiny_folders
    _clear_world(monkeypatch)
    monkeypatch.setenv("RANK", "1")
    args = (["--out", tmp_path / "run", "--batch-size", "2", "--epochs", "1"] if command == "train" else
            ["--checkpoint", tmp_path / "best.pt"])
    (tmp_path / "best.pt").touch()   # the environment is refused before the file is read
    done = run_main(command, "--data", data, "--workers", "0", "--device", "cpu", *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"alexnet {command}: error: RANK is 1 but WORLD_SIZE is not set (one process): ranks "
                           f"run from 0 to WORLD_SIZE - 1 (torchrun sets both); for one process, unset RANK\n")
    assert not (tmp_path / "run").exists()
