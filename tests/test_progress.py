"""Progress without a terminal: plain lines with tqdm's figures, at most one every LOG_SECONDS."""

import io
import re
import sys

import pytest
from tqdm import tqdm

from alexnet import progress
from alexnet.progress import LogLines, progress_bar
from conftest import run_main


def test_a_log_gets_tqdms_figures_as_lines(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert isinstance(progress_bar(range(3), desc="x"), LogLines)   # StringIO is no terminal
    clock = iter([0.0, 10.0, 70.0, 75.0, 140.0, 150.0])
    monkeypatch.setattr(progress, "clock", lambda: next(clock))
    bar = LogLines(total=100, desc="prepare train", unit="img", initial=20)
    for _ in range(4):
        bar.update(20)           # at 10 s (quiet), 70 s (a line), 75 s (quiet), 140 s (a line)
    bar.close()                  # at 150 s: the last line
    bar.close()
    lines = err.getvalue().splitlines()
    assert lines == [tqdm.format_meter(60, 100, 70.0, prefix="prepare train", unit="img", ascii=True, initial=20),
                     tqdm.format_meter(100, 100, 140.0, prefix="prepare train", unit="img", ascii=True, initial=20),
                     tqdm.format_meter(100, 100, 150.0, prefix="prepare train", unit="img", ascii=True, initial=20)]
    assert lines[0].startswith("prepare train:  60%|") and "60/100 [01:10<" in lines[0]


def test_a_short_pass_prints_nothing_and_iterates_everything(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(progress_bar(iter(range(5)), total=5, desc="quick")) == list(range(5))
    assert list(progress_bar(range(5), show=False)) == list(range(5))
    assert err.getvalue() == ""


def test_prepare_without_a_terminal_says_how_far_it_is(tmp_path, monkeypatch):
    from conftest import write_image_folders

    data = write_image_folders(tmp_path / "data", {"ant": [(200, 10, 10)] * 3, "bee": [(10, 200, 10)] * 3})
    monkeypatch.setattr(progress, "LOG_SECONDS", 0.0)
    r = run_main("prepare", "--data", data, "--out", tmp_path / "prep", "--workers", "0")
    assert r.returncode == 0, r.stderr
    for desc, total in (("prepare train", 6), ("prepare val", 6), ("mean image and RGB PCA", 1)):
        assert re.search(rf"^{re.escape(desc)}: 100%\|#+\| {total}/{total} \[", r.stderr, re.M), r.stderr
    assert "\r" not in r.stderr


@pytest.mark.parametrize("show", [True, False])
def test_a_terminal_gets_tqdm(monkeypatch, show):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress_bar(range(2), show=show)
    assert isinstance(bar, tqdm) and bar.disable == (not show)
    bar.close()
