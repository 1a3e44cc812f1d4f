"""The command line: help everywhere, summary output, and one-line exit-2 errors for bad input."""

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alexnet.cli import build_parser, existing_path, main
from alexnet.config import TrainConfig, resolve
from alexnet.errors import UserError


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"usage: alexnet {command}" in capsys.readouterr().out


def test_summary_json_gives_spec_totals(capsys):
    assert main(["summary", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["params"], s["macs"]) == (60_965_224, 724_406_816)
    assert [r["name"] for r in s["layers"]][:4] == ["conv1", "relu1", "norm1", "pool1"]


def test_summary_table_for_owt(capsys):
    assert main(["summary", "--variant", "owt"]) == 0
    out = capsys.readouterr().out
    assert "61,100,840" in out and "714,188,480" in out and "3 x 224 x 224" in out


@pytest.mark.parametrize("argv,fragment", [
    (["summary", "--variant", "vgg"], "invalid choice: 'vgg'"),
    (["summary", "--num-classes", "0"], "expected a positive integer, got 0"),
    (["summary", "--num-classes", "ten"], "expected a positive integer, got 'ten'"),
    (["summary", "--input-size", "100"], "needs 227x227 input"),
    (["summary", "--variant", "owt", "--input-size", "20"], "does not fit the owt network"),
    (["summary", "--bogus"], "unrecognized arguments: --bogus"),
    (["nonsense"], "invalid choice: 'nonsense'"),
    (["train", "--weight-decay", "nan"], "expected a non-negative number, got nan"),
    (["train", "--weight-decay", "inf"], "expected a non-negative number, got inf"),
    (["train", "--warmup-epochs", "nan"], "expected a non-negative number, got nan"),
    (["train", "--variant", "owt", "--lrn", "caffe"], "--lrn caffe does nothing with --variant owt"),
    (["summary", "--variant", "owt", "--lrn", "caffe"], "--lrn caffe does nothing with --variant owt"),
])
def test_bad_input_exits_2_with_one_line(argv, fragment):
    # A real process: what a user sees on stderr, traceback or not.
    r = subprocess.run([sys.executable, "-m", "alexnet", *argv], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert fragment in r.stderr


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "summary" in capsys.readouterr().err


def test_existing_path_rejects_missing_paths(tmp_path):
    assert existing_path(str(tmp_path)) == tmp_path
    with pytest.raises(argparse.ArgumentTypeError, match="does not exist"):
        existing_path(str(tmp_path / "missing"))


def test_console_script_is_installed():
    exe = shutil.which("alexnet", path=str(Path(sys.executable).parent))
    assert exe is not None
    r = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("alexnet ")


def test_a_reader_that_leaves_early_is_no_error():
    # `alexnet summary | head -1`: the reader closes the pipe first; the command stops quietly, exit 0.
    reader, writer = os.pipe()
    os.close(reader)
    try:
        r = subprocess.run([sys.executable, "-m", "alexnet", "summary"], stdout=writer, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    finally:
        os.close(writer)
    assert r.returncode == 0 and r.stderr == ""


def test_a_stdout_closed_before_the_start_is_no_error():
    # `alexnet summary >&-`: Python has no sys.stdout then; every command that printed ended in a traceback.
    r = subprocess.run(f"{shlex.quote(sys.executable)} -m alexnet summary >&-", shell=True, capture_output=True,
                       text=True, timeout=120)
    assert (r.returncode, r.stderr) == (0, "")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_notes_that_cannot_be_written_are_dropped_and_the_work_goes_on(tmp_path):
    # `2>/dev/full` (a full disk under the log): the first progress bar or warning ended the command, exit 1,
    # before training's first step or with predict's results lost. The work itself goes on.
    from conftest import write_image_folders

    data = write_image_folders(tmp_path / "data", {"a": [(200, 10, 10)] * 2, "b": [(10, 10, 200)] * 2})
    (data / "train" / "a" / "notes.txt").write_text("a file prepare leaves out, with a note")
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "alexnet", "prepare", "--data", str(data), "--out",
                            str(tmp_path / "prep"), "--workers", "1"], stdout=subprocess.PIPE, stderr=full, text=True,
                           timeout=300)
    assert r.returncode == 0 and (tmp_path / "prep" / "alexnet-prepared.json").is_file() and "prep" in r.stdout
    assert "computing the mean image" not in r.stdout   # progress is said on stderr; stdout holds the result


# For each kind of number setting: a value the kind refuses, and the nearest it accepts.
OUTSIDE_AND_INSIDE = {"count": ("0", "1"), "non-negative": ("-1", "0"), "positive": ("0", "1e-9"),
                      "fraction": ("1", "0")}


@pytest.mark.parametrize("field", [f for f in dataclasses.fields(TrainConfig) if f.metadata["kind"]],
                         ids=lambda f: f.name)
def test_train_flags_refuse_what_the_config_refuses(field, capsys):
    parser, flag = build_parser(), "--" + field.name.replace("_", "-")
    number = {"int": int, "float": float}[field.type.replace(" | None", "")]
    outside, inside = OUTSIDE_AND_INSIDE[field.metadata["kind"]]
    assert getattr(parser.parse_args(["train", flag, inside]), field.name) == number(inside)
    refused = [outside] + (["nan", "inf"] if number is float else [])
    for text in refused:
        with pytest.raises(SystemExit):
            parser.parse_args(["train", flag, text])
        with pytest.raises(UserError, match=field.name):
            resolve("paper", {field.name: number(text)})


def test_ctrl_c_is_one_line_even_while_torch_is_imported(monkeypatch, capsys):
    # The console script imports alexnet.cli, then main() runs the command, which imports torch (seconds):
    # the import itself must not need torch, so that Ctrl-C in those seconds reaches main's handler.
    r = subprocess.run([sys.executable, "-c", "import sys, alexnet.cli; print('torch' in sys.modules)"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr

    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr("alexnet.cli.build_parser", interrupted)
    assert main(["summary"]) == 130
    assert capsys.readouterr().err == "alexnet: interrupted\n"


def test_parsing_needs_no_torch_so_help_usage_errors_and_sigterm_answer_at_once():
    # Importing torch takes seconds (more from a cold disk): --help and a usage error must not wait for it, and
    # a SIGTERM in those first seconds of a command must end it as one anywhere else does: one line, 143.
    code = """if True:
        import importlib.abc, os, signal, sys
        from alexnet.cli import build_parser, main
        parser = build_parser()
        for argv in (["train", "--device", "cuda:1", "--epochs", "3", "--lrn", "caffe", "--small", "pad"],
                     ["bench", "gpu", "--sections", "train,lrn", "--device", "cpu"], ["summary", "--variant", "owt"],
                     ["export", "--checkpoint", sys.executable, "--format", "onnx", "--out", "w.onnx"],
                     ["evaluate", "--checkpoint", sys.executable, "--data", sys.prefix, "--views", "dense",
                      "--precision", "int8"],
                     ["prepare", "--data", sys.prefix, "--out", "prep", "--store", "jpeg"],
                     ["plan", "--gpus", "8", "--link-gbps", "100", "--variant", "owt"]):
            parser.parse_args(argv)
        assert "torch" not in sys.modules, "parsing imported torch"

        class SigtermAtTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch":
                    os.kill(os.getpid(), signal.SIGTERM)
        sys.meta_path.insert(0, SigtermAtTorch())
        sys.exit(main(["summary"]))
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (143, "alexnet summary: stopped by SIGTERM\n")


@pytest.mark.parametrize("error, shown", [
    (OSError(30, "Read-only file system", "/mnt/ro/run"), "cannot use /mnt/ro/run (Read-only file system)"),
    (OSError(28, "No space left on device"), "error: No space left on device"),
    (OSError(20, "Not a directory", "a.txt/b"), "cannot use a.txt/b (Not a directory)"),
])
def test_the_file_systems_refusals_are_one_line(monkeypatch, capsys, error, shown):
    def fails(args):
        raise error
    parser = build_parser()
    monkeypatch.setattr("alexnet.cli.build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["summary"].set_defaults(run=fails)
    assert main(["summary"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alexnet summary: error: ") and shown in err and len(err.splitlines()) == 1, err
    # Any other OSError is a fault of the program's and keeps its traceback.
    error.errno = 104
    with pytest.raises(OSError):
        main(["summary"])


GLOO_PEER_GONE = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
                  "[127.0.0.1]:40159. This is typically caused by a remote worker crashing. Check the logs of the "
                  "remote worker before reporting an error.")   # as torch 2.14's gloo words it


def in_a_job_of_two(monkeypatch, run) -> None:
    """`alexnet train` and `alexnet summary` do ``run``, in a process of a job of two."""
    parser = build_parser()
    monkeypatch.setattr("alexnet.cli.build_parser", lambda: parser)
    for command in ("train", "summary"):
        parser._subparsers._group_actions[0].choices[command].set_defaults(run=run)
    monkeypatch.setenv("WORLD_SIZE", "2")


def test_torchruns_sigterm_on_the_way_out_of_a_failed_collective_leaves_the_failure_said(monkeypatch, capsys):
    # A worker died; the survivor's collective failed, and torchrun's SIGTERM reached it in the teardown (a
    # finally clause) as the failure went by: it said only "stopped by SIGTERM", not why, nor what a restart
    # resumes from. A SIGTERM with no failure under way stays one.
    def fails_then_signalled(args):
        try:
            if args.command == "train":
                raise RuntimeError(GLOO_PEER_GONE)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)   # the handler runs here, between two bytecodes
    in_a_job_of_two(monkeypatch, fails_then_signalled)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    assert main(["train"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("alexnet train: error: another process of the job failed (") and "SIGTERM" not in err
    assert err.endswith("torchrun restarts the group from the last checkpoint if --max-restarts allows\n")
    assert main(["summary"]) == 143
    assert capsys.readouterr().err == "alexnet summary: stopped by SIGTERM\n"


def test_a_peer_that_died_in_a_collective_is_one_line_and_other_errors_keep_their_traceback(monkeypatch, capsys,
                                                                                         tmp_path):
    failure = RuntimeError(GLOO_PEER_GONE)

    def fails(args):
        raise failure
    in_a_job_of_two(monkeypatch, fails)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    assert main(["train"]) == 1
    # Every process that saw it says it (not through torchrun's error file, where the survivor's line could
    # be named the job's root cause ahead of the process that died).
    assert capsys.readouterr().err == (
        "alexnet train: error: another process of the job failed ([/__w/pytorch/pytorch/third_party/gloo/gloo/"
        "transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:40159.); this one stops too, and "
        "torchrun restarts the group from the last checkpoint if --max-restarts allows\n")
    assert not (tmp_path / "error.json").exists()
    assert main(["summary"]) == 1
    assert capsys.readouterr().err.endswith("; this one stops too\n")   # no training to restart
    monkeypatch.setenv("WORLD_SIZE", "1")   # alone, no peer can have failed: a fault of the program's
    with pytest.raises(RuntimeError):
        main(["summary"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    failure = RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(RuntimeError):
        main(["summary"])


@pytest.mark.parametrize("filename", [None, ".set.partial-0123abcd/train/checker/checker_0001.jpg"])
def test_a_file_system_error_names_the_out_the_user_gave_not_a_temporary_file(tmp_path, monkeypatch, filename):
    import errno

    from alexnet.data import demo
    from conftest import run_main

    def full(root, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", *([str(tmp_path / filename)] if filename else []))

    monkeypatch.setattr(demo, "_generate", full)
    r = run_main("demo-data", "--out", tmp_path / "set")
    assert r.returncode == 2 and r.stderr == f"alexnet demo-data: error: cannot use {tmp_path / 'set'} (No space " \
                                             f"left on device)\n", r.stderr


@pytest.mark.parametrize("local_rank, said", [(None, True), ("0", True), ("1", False)])
def test_a_sigterm_is_said_once_a_machine_under_torchrun(monkeypatch, capsys, local_rank, said):
    # SIGTERM to a torchrun job reaches every process: each said "stopped by SIGTERM", 8 lines for 8 GPUs.
    import os
    import signal

    from alexnet.cli import _StopsOnSigterm
    from alexnet.errors import Stopped

    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    with pytest.raises(Stopped) as stopped, _StopsOnSigterm("alexnet prepare"):
        os.kill(os.getpid(), signal.SIGTERM)   # the handler runs before the next line
        pytest.fail("not stopped")
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert capsys.readouterr().err == ("alexnet prepare: stopped by SIGTERM\n" if said else "")


def test_sigusr1_before_training_starts_is_one_line_too(capsys):
    # A scheduler's SIGUSR1 notice in a command's first seconds (before train's own handler) killed the
    # process without a word; train handles it as SIGTERM.
    import signal

    from alexnet.cli import _StopsOnSigterm
    from alexnet.errors import Stopped

    with pytest.raises(Stopped) as stopped, _StopsOnSigterm("alexnet train"):
        os.kill(os.getpid(), signal.SIGUSR1)
        pytest.fail("not stopped")
    assert stopped.value.exit_code == 128 + signal.SIGUSR1
    assert capsys.readouterr().err == "alexnet train: stopped by SIGUSR1\n"
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL   # put back as it was



@pytest.mark.parametrize("command", [["predict", sys.executable], ["features", "--data", sys.prefix, "--out", "f.npz"]])
def test_one_process_commands_are_refused_under_torchrun(command, monkeypatch, capsys):
    # Under torchrun every process did the whole job: predict's answers printed once per process, features'
    # split computed by each and written to one file by all.
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([command[0], "--checkpoint", sys.executable, *command[1:]]) == 2
    assert capsys.readouterr().err == (f"alexnet {command[0]}: error: {command[0]} runs in one process; run it "
                                       f"without torchrun (train and evaluate are the commands that share their "
                                       f"work over processes)\n")


def test_an_unknown_flag_is_said_by_the_subcommand_it_was_given_to(capsys):
    # argparse said "alexnet: error: unrecognized arguments" and pointed to the top-level --help.
    with pytest.raises(SystemExit) as e:
        main(["viz", "curves", "--run", sys.prefix, "--bogus"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("alexnet viz curves: error: unrecognized arguments: --bogus "
                                       "(see alexnet viz curves --help)\n")


def test_train_expands_a_tilde_in_out_as_every_command_does(tmp_path, monkeypatch):
    import alexnet.train
    from conftest import run_main

    asked = {}
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(alexnet.train, "train", lambda config, resume, given: asked.update(out=config.out) or {})
    # `--out=~/runs/t2`: bash leaves a ~ after = as it is; the run was written to ./~/runs/t2.
    r = run_main("train", "--preset", "demo", "--data", tmp_path, "--out=~/runs/t2")
    assert r.returncode == 0, r.stderr
    assert asked["out"] == str(tmp_path / "home" / "runs" / "t2")
    # Every check of --out sees the folder it names: `--out=~/data` where that is --data was not refused.
    (tmp_path / "home" / "data").mkdir(parents=True)
    r = run_main("train", "--preset", "demo", "--data", tmp_path / "home" / "data", "--out=~/data")
    assert r.returncode == 2 and "is the --data this command reads" in r.stderr, r.stderr
    r = run_main("train", "--preset", "demo", "--data", tmp_path, "--out", "")   # a traceback from samefile;
    assert r.returncode == 0 and asked["out"] == "", r.stderr                    # train refuses it (stubbed here)


@pytest.mark.parametrize("holds_a_run", [False, True])
def test_resume_auto_refuses_lrn_for_owt_as_a_fresh_run_unless_it_continues_one(tmp_path, monkeypatch, holds_a_run):
    import alexnet.train
    from conftest import run_main

    started = []
    monkeypatch.setattr(alexnet.train, "train", lambda config, resume, given: started.append(config) or {})
    run = tmp_path / "o1"
    if holds_a_run:   # an owt run's checkpoint: the run's own settings decide, and train refuses a change
        run.mkdir()
        (run / "last.pt").touch()
    r = run_main("train", "--preset", "torchvision", "--lrn", "caffe", "--data", tmp_path, "--out", run,
                 "--resume", "auto")
    if holds_a_run:
        assert r.returncode == 0 and len(started) == 1, r.stderr
    else:
        assert r.returncode == 2 and not started and not run.exists()
        assert r.stderr == ("alexnet train: error: --lrn caffe does nothing with --variant owt, which has no LRN "
                            "layers; leave --lrn out\n"), r.stderr


@pytest.mark.parametrize("flags,refused", [
    (["--preset", "demo", "--lars-eta", "5"], "--lars-eta applies to --optimizer lars; this run's optimizer is sgd"),
    (["--preset", "demo", "--patience", "2", "--max-lr-drops", "9"],
     "--patience applies to --schedule plateau; this run's schedule is cosine"),
    (["--preset", "demo", "--max-lr-drops", "9"], "--max-lr-drops applies to --schedule plateau; this run's "),
    (["--preset", "demo", "--step-epochs", "7"], "--step-epochs applies to --schedule step; this run's schedule is c"),
    (["--schedule", "cosine", "--lr-gamma", "0.5"], "--lr-gamma applies to --schedule plateau or step; this run's "),
    (["--preset", "demo", "--dropout-start", "3"], "--dropout-start is the epoch dropout switches on at, and this "
                                                   "run's dropout is 0, so it would do nothing; give --dropout too"),
    (["--max-lr-drops", "0", "--lr-gamma", "0.5"], "--lr-gamma is what each division multiplies the learning rate "
                                                   "by, and this run's plateau schedule has max_lr_drops 0"),
    (["--preset", "demo", "--weight-decay", "0", "--bias-decay"], "--bias-decay says whether weight decay reaches "
                                                                  "the biases, and this run's weight_decay is 0"),
    # A preset's own values for its schedule and optimizer are not given: another schedule leaves them unread.
    (["--preset", "paper", "--schedule", "cosine"], None),
    (["--preset", "large-batch", "--optimizer", "sgd"], None),
    (["--preset", "demo", "--schedule", "step", "--step-epochs", "7", "--lr-gamma", "0.5", "--dropout", "0.3",
      "--dropout-start", "2", "--optimizer", "lars", "--lars-eta", "0.01", "--no-zero-init-fc8"], None),
])
def test_train_refuses_flags_that_would_do_nothing(tmp_path, monkeypatch, flags, refused):
    import alexnet.train
    from conftest import run_main

    started = []
    monkeypatch.setattr(alexnet.train, "train", lambda config, resume, given: started.append(config) or {})
    r = run_main("train", *flags, "--data", tmp_path, "--out", tmp_path / "run")
    if refused is None:
        assert r.returncode == 0 and len(started) == 1, r.stderr
    else:
        assert r.returncode == 2 and not started and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"alexnet train: error: {refused}"), r.stderr


def test_a_resume_leaves_such_flags_to_the_runs_own_settings(tmp_path, monkeypatch):
    # None of them may change on a resume (train refuses a change as one), and the run's first command given
    # again (a requeued job's, or one an earlier version accepted) must continue it.
    import alexnet.train
    from conftest import run_main

    started = []
    monkeypatch.setattr(alexnet.train, "train", lambda config, resume, given: started.append(given) or {})
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").touch()   # a run that may be a plateau one: its checkpoint says (train refuses a change)
    r = run_main("train", "--preset", "demo", "--patience", "2", "--out", run, "--resume")
    assert r.returncode == 0 and started[0]["patience"] == 2, r.stderr
    r = run_main("train", "--preset", "demo", "--schedule", "cosine", "--patience", "2", "--max-lr-drops", "0",
                 "--out", run, "--resume")
    assert r.returncode == 0 and started[1]["patience"] == 2, r.stderr


@pytest.mark.parametrize("fails_on", ["write", "flush"])   # unbuffered (PYTHONUNBUFFERED=1), or at the end
def test_a_stdout_that_cannot_be_written_is_said_so_not_blamed_on_the_out_file(tmp_path, monkeypatch, capsys,
                                                                               fails_on):
    import contextlib
    import errno
    import io

    from alexnet.data import demo

    class Full(io.StringIO):   # `> /dev/full`
        def write(self, text):
            if fails_on == "write":
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(text)

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(demo, "_generate", lambda root, *args, **kwargs: None)
    with contextlib.redirect_stdout(Full()):
        code = main(["demo-data", "--out", str(tmp_path / "set")])
    assert code == 2 and (tmp_path / "set").is_dir()
    assert capsys.readouterr().err == "alexnet demo-data: error: cannot write the output to stdout (No space left on " \
                                      "device)\n"


@pytest.mark.parametrize("argv,fragment", [
    # torch's TypeError (empty(): Overflow; zeros(): Overflow) and RuntimeError (storage size) before
    (["summary", "--num-classes", str(2**63)], "argument --num-classes: expected an integer from 1 to "
                                               "562,949,953,421,311 (fc8's 4096 x N weights"),
    (["summary", "--num-classes", str(2**63 - 1)], "argument --num-classes: expected an integer from 1 to 562,"),
    (["summary", "--input-size", "100000000000000000000"], "argument --input-size: expected an integer from 1 to "
                                                           "619,925,135 (conv1's output for it"),
    # the largest side allowed: conv1's 96 maps fit, and the paper network says why it cannot take them
    (["summary", "--input-size", "619925135"], "does not fit the paper network: the paper network needs 227x227"),
    # islice's ValueError in data/loader.py before
    (["evaluate", "--batch-size", str(2**63)], "argument --batch-size: expected an integer from 1 to "
                                               "9,223,372,036,854,775,807 (2^63 - 1), got 9,223,372,036,854,775,808"),
    (["features", "--batch-size", str(2**63)], "argument --batch-size: expected an integer from 1 to 9,223,"),
    (["viz", "neighbors", "--batch-size", str(2**63)], "argument --batch-size: expected an integer from 1 to 9,"),
    (["demo-data", "--seed", str(2**63)], "argument --seed: expected an integer from 0 to 9,223,"),
    # thousands of decoding processes, each started before the first image
    (["prepare", "--workers", "100000"], "argument --workers: expected an integer from 0 to "),
    (["evaluate", "--workers", "100000"], "argument --workers: expected an integer from 0 to "),
    (["bench", "data", "--workers", "100000"], "argument --workers: expected an integer from 1 to "),
])
def test_integer_flags_past_what_can_be_used_are_one_line_naming_the_range(argv, fragment):
    from conftest import run_main

    r = run_main(*argv)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert fragment in r.stderr, r.stderr
