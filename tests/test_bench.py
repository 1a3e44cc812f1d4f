"""`alexnet bench`: each benchmark reports ours, the baseline and their ratio, from one run (tiny sizes
here: speed itself is what `alexnet bench` is for, not the tests)."""

import json
import multiprocessing
import re
import subprocess
from pathlib import Path

import pytest
import torch

from alexnet.bench import run
from alexnet.model import AlexNet
from alexnet.summary import summarize
from conftest import run_cli as cli

ROOT = Path(__file__).resolve().parent.parent


def check_common(r, name):
    assert r["benchmark"] == name
    assert r["ours"] > 0 and r["baseline"] > 0
    assert r["ratio"] == pytest.approx(r["ours"] / r["baseline"])
    # Every figure names the machine and precision it was measured with (machine.py, tested there).
    assert r["machine"]["cpu"] and r["machine"]["precision"] in ("fp32", "bf16", "fp16")


def test_train_reports_utilisation_from_the_papers_flops(monkeypatch):
    import importlib

    import torch

    from alexnet.bench import timing

    # Measured times are noise here; fixed ones make every figure checkable. Each step still runs once,
    # and the peak's matrix product gives its size away: (n, n) for 2 n^3 FLOPs.
    step_s, matmul_s, products = 0.25, 0.002, []

    def fixed_median(step, repeats, warmup=1):
        out = step()
        if isinstance(out, torch.Tensor) and out.dim() == 2:
            products.append(out.shape)
            return matmul_s
        return step_s

    for module in (timing, importlib.import_module("alexnet.bench.train")):
        if hasattr(module, "median_seconds"):
            monkeypatch.setattr(module, "median_seconds", fixed_median)
    # The baseline's own process is timed before and after ours: its figure is noise here too, so the first
    # process (a fresh interpreter, 5 s) answers for the second.
    bench_train, fresh = importlib.import_module("alexnet.bench.train"), []
    real = bench_train._baseline_in_own_process

    def baseline_once(*args):
        fresh[:] = fresh or [real(*args)]
        return fresh[0]
    monkeypatch.setattr(bench_train, "_baseline_in_own_process", baseline_once)
    r = run("train", batch_size=2, steps=1)
    check_common(r, "train")
    # 6 FLOPs per multiply-add of the forward pass (2 per MAC, forward + two backward products).
    flops = 6 * summarize(AlexNet("paper").to("meta"))["macs"]
    assert flops == 6 * 724_406_816
    assert r["batch_size"] == 2 and r["ours"] == pytest.approx(2 / step_s)
    assert r["achieved_tflops"] == pytest.approx(2 / step_s * 6 * 724_406_816 / 1e12)
    assert len(set(products)) == 1 and products[0][0] == products[0][1]
    n = products[0][0]
    assert r["peak_tflops"] == pytest.approx(2 * n**3 / matmul_s / 1e12)
    assert r["utilisation"] == pytest.approx((2 / step_s * 6 * 724_406_816) / (2 * n**3 / matmul_s))


def test_infer_reports_latency_and_throughput():
    r = run("infer", batch_size=2, steps=1)
    check_common(r, "infer")
    lat = r["latency_ms"]
    assert lat["ours"] > 0 and r["latency_ratio"] == pytest.approx(lat["baseline"] / lat["ours"])
    # On a CPU the int8 network is timed too, against the same baseline (quantized kernels are CPU-only).
    if r["device"] != "cpu":
        assert "int8" not in r
        return
    q = r["int8"]
    assert q["ours"] > 0 and q["baseline"] > 0 and q["ratio"] == pytest.approx(q["ours"] / q["baseline"])
    assert q["latency_ms"]["ours"] > 0 and q["latency_ratio"] == pytest.approx(
        q["latency_ms"]["baseline"] / q["latency_ms"]["ours"])
    assert "int8" in q["settings"] and "LRN in float" in q["settings"]


def test_data_compares_the_four_pipelines_on_the_same_files(tmp_path, monkeypatch):
    from alexnet.bench import data
    from alexnet.cli import _bench_line

    # 2 workers where 1 core may be used: they share it, so per core is per run (not the baseline halved).
    monkeypatch.setattr(data, "usable_cores", lambda: 1)
    r = run("data", images=12, batch_size=4, workers=2, steps=1, root=tmp_path)
    check_common(r, "data")
    assert r["jpeg_path"] > 0 and r["per_core"]["ours"] == r["ours"]       # the prepared path uses one core
    assert r["per_core_ratio"] == pytest.approx(r["ours"] / r["baseline"])  # 1 core: per core = per run
    assert r["worker_cores"] == 1 and "over 1 core)" in _bench_line(r)
    assert "2 DataLoader workers sharing 1 core" in _bench_line(r)
    # The jpeg store: one core too, and its bytes an image against the raw store's 256 x 256 x 3.
    assert r["per_core"]["jpeg_store"] == r["jpeg_store"] > 0
    assert r["jpeg_store_ratio"] == pytest.approx(r["jpeg_store"] / r["per_core"]["baseline"])
    sizes = r["bytes_per_image"]
    assert sizes["raw"] == 256 * 256 * 3 and 0 < sizes["jpeg"] < sizes["raw"] / 5
    assert "jpeg store" in _bench_line(r) and f"quality {r['jpeg_quality']}" in _bench_line(r)
    # The augmentation draws of Draws.per_sample, timed alone: a per-process ceiling, printed with ours.
    assert r["draws_per_s"] > 0 and f"{r['draws_per_s']:,.0f} samples/s per process" in _bench_line(r)
    assert not list(tmp_path.iterdir())                                      # its files are cleaned up
    # and its loader workers stopped: the baseline's persistent ones, left to the garbage collector, could
    # be collected in a later loader's forked worker, which printed a traceback after the report.
    assert not multiprocessing.active_children()


def test_data_alternates_the_pipelines_for_steps_epochs_and_reports_each_ones_median(monkeypatch):
    from alexnet.bench import data
    from conftest import run_main

    # A clock that each epoch moves on by its own seconds: rates known in advance, nothing timed for real.
    clock, order = [0.0], []

    def pipeline(name, seconds):
        def epoch(e):
            order.append((name, e))
            clock[0] += seconds[e]
            yield torch.zeros(10)
        return epoch

    monkeypatch.setattr(data.time, "perf_counter", lambda: clock[0])
    rates = data._median_rates({"baseline": (pipeline("baseline", [9, 1, 2, 4]), None),
                                "ours": (pipeline("ours", [9, 0.1, 0.5, 0.2]), 1)}, 3)
    assert order == [(name, e) for e in range(4) for name in ("baseline", "ours")]   # in turns, a first untimed
    assert rates == {"baseline": pytest.approx(10 / 2), "ours": pytest.approx(10 / 0.2)}   # medians, not best
    # --steps reaches it from the command line.
    got = {}
    monkeypatch.setattr("alexnet.bench.run", lambda name, **kw: got.update(kw) or {})
    monkeypatch.setattr("alexnet.cli._bench_line", lambda r: "")
    assert run_main("bench", "data", "--steps", 7).returncode == 0 and got["steps"] == 7


def test_data_stops_the_baselines_persistent_workers_itself(tmp_path):
    from alexnet.bench import data

    # Left to the garbage collector, a later loader's forked worker could collect the baseline's loader and
    # print "can only test a child process" after the report (--images 7 --batch-size 4 --workers 1).
    epoch = data._baseline_batches(data.write_photos(tmp_path, 4), 2, 1)
    assert sum(len(x) for x in epoch(0)) == 4
    workers = multiprocessing.active_children()
    assert workers and all(w.is_alive() for w in workers)   # persistent: still there between epochs
    epoch.close()
    assert not any(w.is_alive() for w in workers)
    epoch.close()   # twice is harmless


def test_cli_json_and_bad_input():
    from alexnet.cli import _bench_line
    from conftest import run_main

    r = cli("bench", "infer", "--batch-size", 1, "--steps", 1, "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["benchmark"] == "infer" and got["int8"]["ratio"] > 0
    text = _bench_line(got)   # what the same command prints without --json (one run of the benchmark, not two)
    assert "on: " in text and "PyTorch kernels" in text and "precision" in text
    assert "int8 " in text and "int8: paper network" in text
    r = cli("bench", "disk")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "invalid choice" in r.stderr
    # Fewer images than a batch: training drops a partial batch, so there would be nothing to time.
    r = run_main("bench", "data", "--images", 8)
    assert r.returncode == 2 and r.stderr.strip() == ("alexnet bench: error: --images 8 is fewer than one batch of "
                                                      "64 (training drops a partial batch): give --images 64 or "
                                                      "more, or a smaller --batch-size")
    r = run_main("bench", "towers", "--batch-size", 3)
    assert r.returncode == 2 and r.stderr.strip() == ("alexnet bench: error: --batch-size must be even for bench "
                                                      "towers (data parallel splits it over 2 processes), got 3")


ALLOCATOR = ("RuntimeError: [enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: "
             "you tried to allocate 40265318400 bytes. Error code 12 (Cannot allocate memory)")


def test_a_batch_too_large_for_memory_is_one_line_not_a_traceback(monkeypatch):
    from alexnet.bench import fits, infer, towers, train
    from alexnet.errors import UserError
    from conftest import run_main

    # Refused before any work where the estimate is over what is free ...
    monkeypatch.setattr(fits, "available_bytes", lambda device: 1.5e9)
    with pytest.raises(UserError, match=r"^--batch-size 2 does not fit in memory here \(it needs about 2\.0 GB, "
                                        r"1\.5 GB are free\); give a smaller --batch-size$"):
        train.bench_train(batch_size=2, steps=1, device="cpu")
    # ... and the allocator's refusal, where the estimate passed, said the same way.
    monkeypatch.setattr(fits, "available_bytes", lambda device: None)

    def refused(*args, **kwargs):
        raise RuntimeError(ALLOCATOR.removeprefix("RuntimeError: "))
    monkeypatch.setattr(train, "paper_step", refused)
    r = run_main("bench", "train", "--batch-size", 2, "--steps", 1, "--device", "cpu")
    assert r.returncode == 2 and r.stderr.strip() == ("alexnet bench: error: --batch-size 2 does not fit in memory "
                                                      "here (it needs about 2.0 GB); give a smaller --batch-size")

    def cuda_refused(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(infer, "_against", cuda_refused)
    with pytest.raises(UserError, match="^--batch-size 4 does not fit in memory here"):
        infer.bench_infer(batch_size=4, steps=1, device="cpu")
    # towers: a child's failure, 46 lines of it, is the same one line.
    traceback = "Traceback (most recent call last):\n" + "  File ...\n" * 44 + ALLOCATOR + "\n"
    monkeypatch.setattr(towers.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", traceback))
    with pytest.raises(UserError, match="^--batch-size 8 does not fit in memory here"):
        towers._launch("single", 8, 1, Path("/nonexistent"), 1)


def test_gpu_script_gives_every_figure_in_one_call_at_toy_size(tmp_path):
    out = tmp_path / "gpu.json"
    # OUT as the caller names it: relative to the folder it is called from, not the checkout it cd's to.
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "gpu.json", "--device", "cpu", "--batches", "2",
                        "--steps", "1", "--images", "8", "--workers", "1", "--compile-backend", "eager"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(f"gpu.sh: every figure is in {out}") and not (ROOT / "gpu.json").exists()
    got = json.loads(out.read_text())
    assert not [name for name, v in got.items() if isinstance(v, dict) and "error" in v], got
    rows = {row["network"]: row for row in got["train"]}
    assert set(rows) == {"paper", "paper, compiled", "torchvision fp32", "torchvision bf16"}
    for name, row in rows.items():
        # Model-FLOP utilisation: 6 multiply-adds' worth of FLOPs per image and pass, over the measured peak.
        macs = summarize(AlexNet("owt" if "torchvision" in name else "paper").to("meta"))["macs"]
        peak = got["peak"]["fp32_tflops" if name.endswith("fp32") else "bf16_tflops"] * 1e12
        assert row["batch"] == 2 and row["img_s"] > 0
        assert row["mfu"] == pytest.approx(row["img_s"] * 6 * macs / peak)
        assert row["ms_per_step"] == pytest.approx(2e3 / row["img_s"])
    lrn = got["lrn"]
    assert lrn["fused_kernel"] == "c" and set(lrn["ms_per_step"]) == {"fused", "ops", "none"}
    assert lrn["share"]["fused"] == pytest.approx(1 - lrn["ms_per_step"]["none"] / lrn["ms_per_step"]["fused"])
    assert got["infer"]["latency_ms"] > 0 and got["infer"]["img_s"] > 0
    assert got["data"]["raw_img_s"] > 0 and got["data"]["jpeg_img_s"] > 0
    assert not got["data"]["jpeg_decoded_on_device"]
    for expected in ("paper, compiled", "torchvision bf16", "LRN at batch 2", "inference: batch 1", "raw store"):
        assert expected in r.stdout
    assert "FAILED" not in r.stdout


def test_gpu_refuses_bad_batch_lists_in_one_line():
    from conftest import run_main

    r = cli("bench", "gpu", "--batches", "128,x")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "positive integers" in r.stderr
    r = run_main("bench", "gpu", "--device", "cpu", "--images", 8, "--batches", "16,32")   # its data section's
    assert r.returncode == 2 and r.stderr.strip().endswith("give --images 16 or more, or a smaller --batches")


@pytest.mark.parametrize("flags, said", [
    (["infer", "--out", "report.json"], "--out is read by bench gpu only, not by infer"),
    (["all", "--compile-backend", "eager"], "--compile-backend is read by bench gpu only, not by data, train, infer"),
    (["gpu", "--batch-size", "256"],
     "--batch-size is read by bench data, train, infer, towers only, not by gpu (gpu's batch sizes are --batches)"),
    (["towers", "--device", "cpu"], "--device is read by bench train, infer, gpu only, not by towers"),
    (["data", "--compile"], "--compile is read by bench train only, not by data"),
])
def test_a_flag_none_of_the_named_benchmarks_reads_is_refused_not_ignored(flags, said, tmp_path, monkeypatch):
    from conftest import run_main

    monkeypatch.chdir(tmp_path)
    r = run_main("bench", *flags)
    assert r.returncode == 2 and r.stderr.strip() == f"alexnet bench: error: {said}", r.stderr
    assert not list(tmp_path.iterdir())    # before any work: nothing written


def test_gpu_says_where_there_is_none_and_never_writes_over_another_file(tmp_path):
    from conftest import run_main

    if not torch.cuda.is_available():   # minutes of CPU load under a GPU's name: asked for by name only
        r = run_main("bench", "gpu", "--steps", "1")
        assert r.returncode == 2 and "PyTorch sees none; add --device cpu" in r.stderr, r.stderr
    (tmp_path / "best.pt").write_bytes(b"PK\x03\x04 a checkpoint")
    r = run_main("bench", "gpu", "--device", "cpu", "--out", tmp_path / "best.pt")
    assert r.returncode == 2 and "exists and is not a bench gpu report" in r.stderr, r.stderr
    assert (tmp_path / "best.pt").read_bytes() == b"PK\x03\x04 a checkpoint"


def test_gpu_out_is_checked_before_measuring_and_a_missing_folder_made(tmp_path, monkeypatch):
    from alexnet.bench import gpu
    from alexnet.errors import UserError

    measured = []
    monkeypatch.setattr(gpu, "_peaks", lambda *a: measured.append(1) or {"bf16_tflops": 1.0, "fp32_tflops": 1.0})
    (tmp_path / "a file").write_text("not a folder")
    for out, said in [("/proc/x.json", "could not write --out /proc/x.json ("),
                      (tmp_path / "a file" / "r.json", f"{tmp_path / 'a file'} is a file, not a folder")]:
        with pytest.raises(UserError, match=re.escape(said)):
            gpu.bench_gpu(device="cpu", batches=(2,), steps=1, out=out, sections=())
    assert not measured   # refused before the first section, not after it
    out = tmp_path / "missing" / "r.json"
    gpu.bench_gpu(device="cpu", batches=(2,), steps=1, out=out, sections=())
    assert json.loads(out.read_text())["peak"]["bf16_tflops"] == 1.0 and measured
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]      # no temporary file left beside it


def test_every_printed_report_ends_with_the_machine_and_train_prints_the_in_process_baseline(tmp_path):
    from alexnet.bench import gpu
    from alexnet.cli import _bench_line
    from alexnet.machine import one_line

    r = gpu.bench_gpu(device="cpu", batches=(2,), steps=1, sections=(), matmul_size=64)
    assert gpu.format_report(r).splitlines()[-1] == f"on: {one_line(r['machine'])}"
    train = {"benchmark": "train", "ours": 60.0, "baseline": 30.0, "ratio": 2.0, "baseline_same_process": 33.3,
             "machine": r["machine"]}
    assert "baseline in this process 33.3 img/s" in _bench_line(train)


def test_the_step_parts_study_takes_away_exactly_the_part_it_names():
    import importlib.util

    spec = importlib.util.spec_from_file_location("step_parts", ROOT / "benchmarks" / "step_parts.py")
    parts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parts)
    paper = summarize(AlexNet("paper").to("meta"))
    layers = {layer["name"]: layer for layer in paper["layers"]}
    merged = summarize(parts.ungrouped(AlexNet("paper")).to("meta"))
    # The towers merged: conv2, conv4 and conv5 see every input channel, twice the multiply-adds of the
    # two towers that see half each; every output shape stays.
    doubled = sum(layers[name]["macs"] for name in ("conv2", "conv4", "conv5"))
    assert merged["macs"] == paper["macs"] + doubled
    assert [la["output_shape"] for la in merged["layers"]] == [la["output_shape"] for la in paper["layers"]]
    plain = parts.without_lrn(AlexNet("paper"))
    assert [type(m).__name__ for m in plain.features].count("Identity") == 2
    assert summarize(plain.to("meta"))["macs"] == paper["macs"]


@pytest.mark.parametrize("script, flags, said", [
    ("lrn_step.py", ["--steps", "0"], "argument --steps: expected a positive integer, got 0"),
    ("lrn_step.py", ["--batch-size", "0"], "argument --batch-size: expected a positive integer, got 0"),
    ("linear_baseline.py", ["--data", "x", "--res", "0"], "argument --res: expected a positive integer, got 0"),
    ("linear_baseline.py", ["--data", "x", "--res", "-3"], "argument --res: expected a positive integer, got -3"),
])
def test_the_readmes_scripts_refuse_counts_below_one_in_argparses_one_line(script, flags, said, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(script[:-3], ROOT / "benchmarks" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as stop:
        module.main(flags)
    assert stop.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(said)


def test_the_finetune_script_replaces_only_what_it_made_and_a_failed_run_is_one_line(tmp_path):
    import sys

    data, out = tmp_path / "data", tmp_path / "out"
    for split in ("train", "val"):
        for cls in ("a", "b", "c"):
            (data / split / cls).mkdir(parents=True)
            (data / split / cls / "x.jpg").write_bytes(b"not a picture")
    mine = out / "runs" / "mine" / "best.pt"   # a run of the user's own, beside the script's
    mine.parent.mkdir(parents=True)
    mine.write_text("keep")
    script = [sys.executable, str(ROOT / "benchmarks" / "finetune.py"), "--data", str(data), "--out", str(out),
              "--held-out", "c"]
    # Two images make no full batch: the first `alexnet train` it runs ends with exit status 2.
    r = subprocess.run(script, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == \
        f"finetune: alexnet train of run pre ({out / 'runs' / 'pre'}) ended with exit status 2"
    assert mine.read_text() == "keep"
    assert (out / "pre" / "train" / "a" / "x.jpg").is_symlink()   # its own link set, replaced on every call
    (out / "new" / "notes.txt").write_text("mine too")
    r = subprocess.run(script, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == \
        f"finetune: --out: {out / 'new'} is not a set of links this script made; move it away or choose another --out"
    assert (out / "new" / "notes.txt").read_text() == "mine too"


def test_gpu_reports_the_median_epoch_of_what_one_loading_process_delivers(monkeypatch):
    from types import SimpleNamespace

    from alexnet.bench import gpu

    class Loader:   # one batch of 8 images an epoch; the augmentation on the device is train.py's to test
        sampler = SimpleNamespace(set_position=lambda epoch, step: None)

        def __iter__(self):
            return iter([(torch.zeros(8, 1, 1, 3, dtype=torch.uint8), None, torch.arange(8), None)])

    monkeypatch.setattr(gpu, "train_loader", lambda *a, **k: Loader())
    monkeypatch.setattr(gpu.Draws, "per_sample", lambda *a: None)
    monkeypatch.setattr(gpu, "train_views", lambda x, *a, **k: x)
    # Epochs of 1, 2 and 4 s after the untimed first: 8, 4 and 2 img/s, of which the median is 4 (the best 8).
    clock = iter([0, 10, 11, 20, 22, 30, 34])   # the untimed epoch only starts the clock
    monkeypatch.setattr(gpu, "time", SimpleNamespace(perf_counter=lambda: next(clock)))   # its clock alone
    assert gpu._delivered(None, torch.device("cpu"), 8, None, None) == 4
