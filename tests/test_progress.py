"""progress=: silent on short work, a tqdm bar or plain stderr lines on long work."""

import sys

import numpy as np
import pytest

import jitad
from jitad import progress


def test_short_work_prints_nothing(capsys):
    with progress.watch("short", True, count=lambda: 1):
        pass
    assert capsys.readouterr().err == ""


def test_off_prints_nothing_even_when_long(capsys, monkeypatch):
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    with progress.watch("long", False):
        pass
    assert capsys.readouterr().err == ""


def test_default_follows_the_terminal(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not progress.wanted(None)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert progress.wanted(None)


def test_plain_lines_without_tqdm(capsys, monkeypatch):
    monkeypatch.setattr(progress, "DELAY_S", 0.0)  # report from the start: the final line is certain
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # as if tqdm were not installed
    calls = iter(range(1000, 10**9, 1000))
    with progress.watch("counting", True, count=lambda: next(calls)):
        pass
    err = capsys.readouterr().err
    assert err.startswith("jitad: counting: ") and " entries, done in " in err


def test_a_failing_count_does_not_break_the_work(capsys, monkeypatch):
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with progress.watch("counting", True, count=lambda: 1 / 0):
        pass
    assert "jitad: counting: 0 entries, done in" in capsys.readouterr().err


def test_trace_reports_recording(capsys, monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    F = jitad.trace(lambda x: x[0] * x[1], np.ones(2), progress=True)
    assert F(np.array([2.0, 3.0])) == 6.0
    assert "jitad: recording <lambda>" in capsys.readouterr().err
