"""The learning-rate schedule: warm-up, the paper's divide-on-plateau (3 times at most), step, cosine."""

import math

import pytest

from alexnet.schedule import LRSchedule


def test_linear_warmup_reaches_the_peak_after_its_steps():
    s = LRSchedule("cosine", lr=0.1, steps_per_epoch=10, epochs=5, warmup_epochs=1)
    assert [round(s.lr_at(i), 6) for i in range(3)] == [0.01, 0.02, 0.03]
    assert s.lr_at(9) == pytest.approx(0.1)
    assert s.lr_at(49) < 0.001 and s.lr_at(29) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 19 / 40)))


def test_plateau_divides_by_ten_when_val_stops_improving_three_times_at_most():
    s = LRSchedule("plateau", lr=0.01, steps_per_epoch=5, epochs=90, patience=2)
    history = [0.1, 0.2, 0.2, 0.15, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    drops = [s.end_epoch(v) for v in history]
    assert drops == [False, False, False, True, False, False, True, False, True, False, False, False, False, False]
    assert s.lr_at(1000) == pytest.approx(0.01 * 0.1 ** 3)


def test_step_schedule_like_torchvision():
    s = LRSchedule("step", lr=0.01, steps_per_epoch=10, epochs=90, step_epochs=30)
    assert s.lr_at(299) == pytest.approx(0.01) and s.lr_at(300) == pytest.approx(0.001)
    assert s.lr_at(600) == pytest.approx(0.0001)


def test_state_round_trip():
    a = LRSchedule("plateau", lr=0.01, steps_per_epoch=5, epochs=90, patience=1)
    for v in (0.5, 0.4, 0.3):
        a.end_epoch(v)
    b = LRSchedule("plateau", lr=0.01, steps_per_epoch=5, epochs=90, patience=1)
    b.load_state_dict(a.state_dict())
    assert b.lr_at(0) == a.lr_at(0) == pytest.approx(0.0001)


@pytest.mark.parametrize("kind", ["plateau", "step", "cosine"])
def test_a_warmup_shorter_than_a_step_or_two_still_lowers_the_first_steps_rate(kind):
    # 0.05 and 0.07 epochs of 20 steps were rounded to 1 step (at the full rate: a warm-up's last step is) and
    # 0.02 to none: the run recorded a warm-up it never had.
    for epochs in (0.02, 0.05, 0.07):
        s = LRSchedule(kind, lr=0.1, steps_per_epoch=20, epochs=2, warmup_epochs=epochs)
        assert s.lr_at(0) == pytest.approx(0.05) and s.lr_at(1) == pytest.approx(0.1), epochs
    # Longer ones keep their nearest step; none is none.
    assert LRSchedule(kind, lr=0.1, steps_per_epoch=20, epochs=2, warmup_epochs=0.24).warmup_steps == 5
    assert LRSchedule(kind, lr=0.1, steps_per_epoch=20, epochs=2).lr_at(0) == pytest.approx(0.1)


def test_a_run_recorded_before_the_rule_resumes_with_the_warmup_it_was_trained_with():
    old = {"drops": 0, "best": 0.3, "bad_epochs": 0}   # a last.pt of an earlier version: no warmup_rule
    s = LRSchedule("cosine", lr=0.1, steps_per_epoch=20, epochs=2, warmup_epochs=0.02)
    s.load_state_dict(old)
    before = [0.1 * 0.5 * (1 + math.cos(math.pi * step / 40)) for step in (0, 1, 17)]
    assert [s.lr_at(step) for step in (0, 1, 17)] == pytest.approx(before)
    assert s.state_dict()["warmup_rule"] == "nearest"   # and again at its next resume
    again = LRSchedule("cosine", lr=0.1, steps_per_epoch=20, epochs=2, warmup_epochs=0.02)
    again.load_state_dict(s.state_dict())
    assert again.warmup_steps == 0
    fresh = LRSchedule("cosine", lr=0.1, steps_per_epoch=20, epochs=2, warmup_epochs=0.02)
    fresh.load_state_dict(LRSchedule("cosine", lr=0.1, steps_per_epoch=20, epochs=2, warmup_epochs=0.02).state_dict())
    assert fresh.warmup_steps == 2
