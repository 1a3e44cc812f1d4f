"""alexnet plan: the formulas against hand computation, the smallest batch against its inequality, and
one-line exit-2 errors. Nothing here launches a process."""

import json

import pytest

from alexnet.cli import main
from alexnet.errors import UserError
from alexnet.parallel import exchange_bytes
from alexnet.plan import (H200_PAPER_IMG_S, IMAGENET_TRAIN_IMAGES, Setup, costs, hidden_from, plan,
                          ring_all_reduce_seconds, run_seconds, smallest_batch)

PARAMS = 60_965_224
GRADIENT_BYTES = PARAMS * 4          # 243.9 MB


def test_ring_all_reduce_by_hand():
    assert ring_all_reduce_seconds(GRADIENT_BYTES, 8, 100) == pytest.approx(2 * 7 / 8 * GRADIENT_BYTES * 8 / 100e9)
    # Each of the 2(R-1) messages pays the latency once.
    assert ring_all_reduce_seconds(GRADIENT_BYTES, 8, 100, 5e-6) == pytest.approx(
        2 * 7 / 8 * GRADIENT_BYTES * 8 / 100e9 + 14 * 5e-6)
    assert ring_all_reduce_seconds(GRADIENT_BYTES, 1, 100) == 0


def test_data_parallel_step_by_hand():
    r = plan(Setup(gpus=8, link_gbps=100, batch=2048, per_gpu_img_s=10_000, overlap=0.5))
    s = r["seconds"]
    compute = 256 / 10_000
    comm = 2 * 7 / 8 * GRADIENT_BYTES * 8 / 100e9
    exposed = max(0.0, comm - 0.5 * 2 / 3 * compute)
    assert r["gradient_bytes"] == GRADIENT_BYTES and r["params_per_gpu"] == PARAMS
    assert s["compute"] == pytest.approx(compute)
    assert s["all_reduce"] == pytest.approx(comm)
    assert s["all_reduce_exposed"] == pytest.approx(exposed)
    assert s["step"] == pytest.approx(compute + exposed)
    assert s["step_no_overlap"] == pytest.approx(compute + comm)
    assert r["images_per_sec"] == pytest.approx(2048 / (compute + exposed))


def test_the_default_batch_and_speed_are_the_measured_h200_step():
    r = plan(Setup(gpus=4, link_gbps=100))
    assert r["setup"]["batch"] == 4 * 256 and r["setup"]["per_gpu_img_s"] == H200_PAPER_IMG_S
    assert r["seconds"]["compute"] == pytest.approx(256 / H200_PAPER_IMG_S)
    assert any("measured on one H200" in a for a in r["assumptions"])


def test_ninety_epochs_of_imagenet():
    r = plan(Setup(gpus=8, link_gbps=400, batch=1024))
    assert r["run_seconds"] == pytest.approx(90 * IMAGENET_TRAIN_IMAGES / (1024 / r["seconds"]["step"]))
    assert run_seconds(2.0, 100, epochs=3, images=1000) == pytest.approx(3 * 1000 / 50)
    shorter = plan(Setup(gpus=8, link_gbps=400, batch=1024, epochs=45, images=5000))
    assert shorter["run_seconds"] == pytest.approx(45 * 5000 * r["seconds"]["step"] / 1024)


def test_towers_exchange_what_parallel_counts():
    r = plan(Setup(gpus=4, link_gbps=50, batch=512, towers=True))
    per_pair = 512 // 2
    sent = exchange_bytes(per_pair, 1000, 2)["total"]      # bf16 activations
    assert r["replicas"] == 2 and r["batch_per_replica"] == per_pair
    assert r["towers_exchange"] == {"bytes": sent, "exchanges": 9}
    assert r["seconds"]["towers_exchange"] == pytest.approx(sent * 8 / 50e9)
    # Each tower's replicas all-reduce that tower's half of the gradients.
    assert r["params_per_gpu"] == 30_482_612
    assert r["seconds"]["all_reduce"] == pytest.approx(2 * 1 / 2 * 30_482_612 * 4 * 8 / 50e9)
    fp32 = plan(Setup(gpus=4, link_gbps=50, batch=512, towers=True, precision="fp32"))
    assert fp32["towers_exchange"]["bytes"] == exchange_bytes(per_pair, 1000, 4)["total"] == 2 * sent


def test_towers_step_adds_the_exchanges_unhidden():
    r = plan(Setup(gpus=4, link_gbps=50, batch=512, towers=True, latency_us=10))
    s = r["seconds"]
    assert s["towers_exchange"] == pytest.approx(exchange_bytes(256, 1000, 2)["total"] * 8 / 50e9 + 9 * 10e-6)
    assert s["step"] == pytest.approx(s["compute"] + s["towers_exchange"] + s["all_reduce_exposed"])


SETUPS = [
    Setup(gpus=8, link_gbps=100),
    Setup(gpus=8, link_gbps=100, overlap=0.0),
    Setup(gpus=64, link_gbps=200, overlap=0.3, latency_us=20),
    Setup(gpus=3, link_gbps=10, per_gpu_img_s=500, batch=3),
    Setup(gpus=8, link_gbps=400, towers=True),
    Setup(gpus=16, link_gbps=100, towers=True, overlap=0.0, latency_us=5),
]


@pytest.mark.parametrize("setup", SETUPS, ids=range(len(SETUPS)))
def test_the_smallest_batch_is_the_smallest_that_keeps_comm_under_compute(setup):
    unit = setup.replicas
    c = costs(setup)
    b = smallest_batch(c, unit)
    assert b % unit == 0

    def exposed(batch):   # the model written out again, independently of Costs
        compute = batch / setup.gpus / setup.per_gpu_img_s
        hidden = min(c.all_reduce, setup.overlap * 2 / 3 * compute)
        return c.exchange(batch) + c.all_reduce - hidden, compute

    e, compute = exposed(b)
    assert e <= compute * (1 + 1e-12)
    if b > unit:
        e, compute = exposed(b - unit)
        assert e > compute


def test_the_smallest_batch_by_hand():
    # Data parallel: comm <= (1 + 2/3 overlap) x B / (N x) -> B >= N x comm / (1 + 2/3 overlap).
    r = plan(Setup(gpus=8, link_gbps=100, per_gpu_img_s=10_033))
    comm = 2 * 7 / 8 * GRADIENT_BYTES * 8 / 100e9
    assert r["smallest_batch"] == 1648 == 8 * -(-8 * 10_033 * comm / (5 / 3) // 8)
    assert r["smallest_batch_no_overlap"] == 2744 == 8 * -(-8 * 10_033 * comm // 8)
    assert r["all_reduce_hidden_from_batch"] == 8 * -(-8 * 10_033 * comm / (2 / 3) // 8)


def test_no_batch_when_the_exchanges_outgrow_the_compute():
    # 0.01 Gb/s: a tower pair's activations take far longer than computing the image.
    r = plan(Setup(gpus=2, link_gbps=0.01, towers=True))
    assert r["smallest_batch"] is None and r["smallest_batch_no_overlap"] is None
    assert hidden_from(costs(Setup(gpus=8, link_gbps=10, overlap=0)), 8) is None


@pytest.mark.parametrize("setup,fragment", [
    (Setup(gpus=3, link_gbps=100, towers=True), "--gpus must be even"),
    (Setup(gpus=8, link_gbps=100, batch=100), "--batch 100 does not split evenly over 8 GPUs"),
    (Setup(gpus=4, link_gbps=100, batch=7, towers=True), "over 2 tower pairs"),
    (Setup(gpus=2, link_gbps=100, towers=True, variant="owt"), "only the paper network has towers"),
    (Setup(gpus=2, link_gbps=100, overlap=1.5), "0 to 1"),
    (Setup(gpus=2, link_gbps=0), "--link-gbps must be positive"),
    # Past any machine: the batch search would count beyond 2^53 (where k + 1 == k) and never end.
    (Setup(gpus=8, link_gbps=1e-20), "--link-gbps must be from 0.001 to 1e\\+06, got 1e-20"),
    (Setup(gpus=8, link_gbps=100, per_gpu_img_s=1e308), "--per-gpu-img-s must be from"),
    (Setup(gpus=8, link_gbps=100, latency_us=1e308), "--latency-us must be from"),
    (Setup(gpus=8, link_gbps=400, batch=2048, images=100), "a global batch of 2,048 images is more than an epoch's 100"),
])
def test_the_library_refuses_impossible_setups(setup, fragment):
    with pytest.raises(UserError, match=fragment):
        plan(setup)


# ---- the command ----

def run(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(["plan", *argv])
    except SystemExit as e:   # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("argv,fragment", [
    (["--gpus", "3", "--link-gbps", "100", "--towers"], "--gpus must be even"),
    (["--gpus", "8", "--link-gbps", "100", "--batch", "100"], "does not split evenly"),
    (["--gpus", "0", "--link-gbps", "100"], "expected a positive integer, got 0"),
    (["--gpus", "2", "--link-gbps", "-1"], "expected a positive number, got -1"),
    (["--gpus", "2", "--link-gbps", "nan"], "expected a positive number, got nan"),
    (["--gpus", "2", "--link-gbps", "10", "--per-gpu-img-s", "0"], "expected a positive number, got 0"),
    (["--gpus", "2", "--link-gbps", "10", "--batch", "0"], "expected a positive integer, got 0"),
    (["--gpus", "2", "--link-gbps", "10", "--overlap", "2"], "0 to 1"),
    (["--gpus", "2", "--link-gbps", "10", "--latency-us", "-3"], "expected a non-negative number"),
    (["--gpus", "2"], "the following arguments are required: --link-gbps"),
])
def test_bad_input_is_one_line_and_exit_2(argv, fragment, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert fragment in err and out == ""


def test_the_table_prints_every_assumption(capsys):
    code, out, _ = run(["--gpus", "8", "--link-gbps", "100", "--towers"], capsys)
    assert code == 0
    assert "compute" in out and "towers' exchanges" in out and "all-reduce (ring)" in out
    assert "90 epochs of 1,281,167 images" in out and "smallest batch" in out
    assumed = [line for line in out.splitlines() if line.startswith("assumes: ")]
    assert len(assumed) == 8 and any("2/3" in a for a in assumed)


def test_json_holds_the_same_figures(capsys):
    code, out, _ = run(["--gpus", "8", "--link-gbps", "100", "--batch", "1024", "--json"], capsys)
    assert code == 0
    r = json.loads(out)
    assert r == json.loads(json.dumps(plan(Setup(gpus=8, link_gbps=100, batch=1024))))
    assert r["seconds"]["all_reduce"] == pytest.approx(2 * 7 / 8 * GRADIENT_BYTES * 8 / 100e9)
