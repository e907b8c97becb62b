"""progress=: silent on short work, a tqdm bar or plain stderr lines on long work."""

import importlib
import sys

import numba
import numpy as np
import pytest

import jitad
from jitad import kernels, progress

trace_module = importlib.import_module("jitad.trace")  # jitad.trace is also the function


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


# --- long batches: the points the kernels have written, counted from the watcher ----------


def rosen(x):
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))


def branchy(x, w):
    """Two tapes: points with x[0] > 0 take the other branch (re-recorded mid-batch)."""
    s = rosen(x) * w
    return s + jitad.sin(x[0]) if x[0] > 0 else s - x[0] ** 3


@pytest.fixture
def long_batches(monkeypatch):
    """Every batch counts as long; no delay."""
    monkeypatch.setattr(trace_module, "BATCH_PROGRESS_WORK", 0)
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # plain lines: the final one is certain


def test_long_batch_reports_points_and_gives_the_same_bits(capsys, long_batches):
    X = np.random.default_rng(1).normal(size=(203, 6))
    W = np.linspace(0.5, 2.0, 203)
    F = jitad.trace(branchy, np.full(6, -0.5), 1.0)
    quiet = F.value_and_grad_batch(X, W, progress=False), F.batch(X, W, progress=False)
    assert "jitad: batch" not in capsys.readouterr().err  # (a first compile may say so)
    shown = F.value_and_grad_batch(X, W, progress=True), F.batch(X, W, progress=True)
    err = capsys.readouterr().err
    assert "jitad: batch of 203 points: 203 of 203 points, done in" in err
    for a, b in zip((*quiet[0], quiet[1]), (*shown[0], shown[1])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(F.grad_batch(X, W, block=3, progress=True), quiet[0][1])


def test_long_batch_on_several_threads_gives_the_same_bits(long_batches):
    F = jitad.trace(rosen, np.zeros(40))
    X = np.random.default_rng(2).normal(size=(8000, 40))  # K x entries >= 2e6: parallel kernel
    assert trace_module._workers(len(F.tape), X.shape[0], 8) > 1 or numba.get_num_threads() == 1
    np.testing.assert_array_equal(F.grad_batch(X, progress=True), F.grad_batch(X, progress=False))


def test_batch_progress_counts_the_points_the_kernels_wrote(monkeypatch):
    monkeypatch.setattr(trace_module, "BATCH_PROGRESS_WORK", 0)
    watched = {}
    real_watch = progress.watch

    def watch(what, show, count=None, unit="entries", total=None):
        if what.startswith("batch"):  # (re-recording at a new branch is watched too)
            watched.update(show=show, count=count, total=total)
        return real_watch(what, False, count, unit, total)

    counts = []
    real_kernel = kernels.batch_share

    def kernel(*args):
        counts.append(watched["count"]())
        real_kernel(*args)
        counts.append(watched["count"]())

    monkeypatch.setattr(progress, "watch", watch)
    monkeypatch.setattr(kernels, "batch_share", kernel)
    F = jitad.trace(branchy, np.full(6, -0.5), 1.0)
    X = np.random.default_rng(4).normal(size=(100, 6))
    n_other = int(np.count_nonzero(X[:, 0] > 0))  # the points the second tape takes
    F.grad_batch(X, 1.0, progress=True)
    assert watched["show"] and watched["total"] == 100
    # before and after each kernel call: all pending points written by the first tape, then
    # the points its guards refused, by the tape recorded for them
    assert counts == [0, 100, 100 - n_other, 100] and watched["count"]() == 100


def test_short_batch_is_unchanged_and_prints_nothing(capsys, monkeypatch):
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    calls = []
    real = kernels.batch_share
    monkeypatch.setattr(kernels, "batch_share", lambda *a: calls.append(1) or real(*a))
    F = jitad.trace(rosen, np.zeros(5))
    F.grad_batch(np.ones((100, 5)), progress=True)  # far below BATCH_PROGRESS_WORK
    assert calls == [1] and "jitad: batch" not in capsys.readouterr().err


# --- Dask: its own progress bars, only on long computations ---------------------------------


def test_dask_compute_shows_dasks_bar_only_when_long(capsys, monkeypatch):
    da = pytest.importorskip("dask.array")
    jd = pytest.importorskip("jitad.dask")
    F = jitad.trace(rosen, np.zeros(3))
    X = np.random.default_rng(3).normal(size=(400, 3))
    G = jd.grad_batch(F, da.from_array(X, chunks=(100, 3)))
    (quiet,) = jd.compute(G, progress=True)  # short: silent
    assert "Completed" not in capsys.readouterr().err
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    (shown,) = jd.compute(G, progress=True)
    assert "% Completed" in capsys.readouterr().err
    np.testing.assert_array_equal(quiet, shown)
    np.testing.assert_array_equal(shown, F.grad_batch(X))


def test_minimize_many_on_a_distributed_client_shows_its_progress(capsys, monkeypatch):
    distributed = pytest.importorskip("dask.distributed")
    jd = pytest.importorskip("jitad.dask")
    X0 = np.full((2, 3), -1.0)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None):
        monkeypatch.setattr(progress, "DELAY_S", 0.0)
        results = jd.minimize_many(rosen, X0, progress=True)
    assert "% Completed" in capsys.readouterr().out  # distributed's text bar writes to stdout
    assert [r.success for r in results] == [True, True]
    np.testing.assert_allclose([r.x for r in results], np.ones((2, 3)), atol=1e-4)
