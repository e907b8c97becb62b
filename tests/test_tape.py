"""The tape: its columns, constant folding, recorded comparisons, resets and stale
Values, one tape per thread, 10^6-entry chains, and the backward kernel on hand-built tapes.
"""

import math
import threading

import numpy as np
import pytest

import jitad
from jitad import StaleValueError, Value, kernels, ops

C = ops.CODE


# --- columns ------------------------------------------------------------------------------


def test_columns_of_a_small_tape(tape):
    x = Value(2.0)
    z = Value(-3.0)
    y = x * z
    w = y.sin()
    assert len(tape) == 4
    np.testing.assert_array_equal(tape.op, [C["leaf"], C["leaf"], C["mul"], C["sin"]])
    assert tape.op.dtype == np.uint8
    assert tape.names == ["leaf", "leaf", "mul", "sin"]
    np.testing.assert_array_equal(tape.a, [-1, -1, 0, 2])
    np.testing.assert_array_equal(tape.b, [-1, -1, 1, -1])
    np.testing.assert_array_equal(tape.const, [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(tape.value, [2.0, -3.0, -6.0, math.sin(-6.0)])
    np.testing.assert_array_equal(tape.da, [0.0, 0.0, -3.0, math.cos(-6.0)])
    np.testing.assert_array_equal(tape.db, [0.0, 0.0, 2.0, 0.0])
    assert w.data == tape.value[3]
    assert repr(tape) == "<jitad.Tape with 4 entries>"


def test_an_empty_tape(tape):
    assert len(tape) == 0
    assert tape.names == []
    for column in (tape.op, tape.a, tape.b, tape.const, tape.value, tape.da, tape.db):
        assert column.shape == (0,)


def test_columns_are_copies(tape):
    x = Value(2.0)
    y = x * 3
    values = tape.value
    values[:] = 0.0
    assert tape.value.tolist() == [2.0, 6.0]
    assert jitad.gradients(y, x) == 3.0
    z = y + 1  # recording goes on while a column is held
    assert z.data == 7.0


def test_table_text(tape):
    x = Value(2.0)
    x * 3
    text = tape.table()
    assert "leaf" in text and "mul" in text
    assert len(text.splitlines()) == 3
    for _ in range(10):
        x = x + 1
    assert tape.table(limit=5).splitlines()[-1] == "... 7 more"


@pytest.mark.parametrize(
    ("expression", "op", "a", "b", "const", "value"),
    [
        (lambda x: x + 2, "add", 0, -1, 2.0, 5.0),
        (lambda x: 2 + x, "add", -1, 0, 2.0, 5.0),
        (lambda x: x - 2, "sub", 0, -1, 2.0, 1.0),
        (lambda x: 2 - x, "sub", -1, 0, 2.0, -1.0),
        (lambda x: x * 2, "mul", 0, -1, 2.0, 6.0),
        (lambda x: 2 * x, "mul", -1, 0, 2.0, 6.0),
        (lambda x: x / 2, "div", 0, -1, 2.0, 1.5),
        (lambda x: 2 / x, "div", -1, 0, 2.0, 2 / 3),
        (lambda x: x**2, "powc", 0, -1, 2.0, 9.0),
        (lambda x: 2**x, "pow", -1, 0, 2.0, 8.0),
        (lambda x: jitad.atan2(x, 2.0), "atan2", 0, -1, 2.0, math.atan2(3.0, 2.0)),
        (lambda x: jitad.atan2(2.0, x), "atan2", -1, 0, 2.0, math.atan2(2.0, 3.0)),
        (lambda x: jitad.maximum(1.0, x), "maximum", -1, 0, 1.0, 3.0),
        (lambda x: -x, "neg", 0, -1, 0.0, -3.0),
    ],
)
def test_a_constant_is_folded_into_one_entry(tape, expression, op, a, b, const, value):
    x = Value(3.0)
    y = expression(x)
    assert len(tape) == 2
    assert tape.names[1] == op
    assert (tape.a[1], tape.b[1], tape.const[1]) == (a, b, const)
    assert tape.value[1] == y.data == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize(
    "expression",
    [
        lambda x: x + 0,
        lambda x: 0 + x,
        lambda x: x - 0,
        lambda x: x * 1,
        lambda x: 1 * x,
        lambda x: x / 1,
        lambda x: x**1,
        lambda x: +x,
    ],
)
def test_identities_add_no_entry(tape, expression):
    x = Value(3.0)
    assert expression(x) is x
    assert len(tape) == 1


def test_sum_of_values_starts_without_an_entry(tape):
    xs = [Value(float(i)) for i in range(4)]
    s = sum(xs)
    assert len(tape) == 4 + 3
    assert s.data == 6.0


# --- comparisons and guards --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compare", "op", "a", "b", "outcome"),
    [
        (lambda x, z: x < z, "lt", 0, 1, True),
        (lambda x, z: x <= z, "le", 0, 1, True),
        (lambda x, z: x > z, "lt", 1, 0, False),  # x > z is recorded as z < x
        (lambda x, z: x >= z, "le", 1, 0, False),
        (lambda x, z: x == z, "eq", 0, 1, False),
        (lambda x, z: x != z, "ne", 0, 1, True),
        (lambda x, z: x > 0, "lt", -1, 0, True),
        (lambda x, z: 0 < x, "lt", -1, 0, True),
        (lambda x, z: x < 0, "lt", 0, -1, False),
        (lambda x, z: x == 1.0, "eq", 0, -1, True),
    ],
)
def test_a_comparison_records_itself_and_a_guard(tape, compare, op, a, b, outcome):
    x = Value(1.0)
    z = Value(2.0)
    got = compare(x, z)
    assert type(got) is bool
    assert got is outcome
    assert tape.names == ["leaf", "leaf", op, "guard"]
    assert (tape.a[2], tape.b[2]) == (a, b)
    assert tape.value[2] == float(outcome)
    assert (tape.a[3], tape.b[3]) == (2, -1)  # the guard reads the comparison
    assert tape.const[3] == float(outcome)  # and holds its outcome
    assert tape.value[3] == 1.0


def test_branching_on_a_comparison_differentiates_the_branch_taken(tape):
    x = Value(3.0)
    y = x * x if x > 2 else -x
    assert jitad.gradients(y, x) == 6.0
    assert tape.names.count("guard") == 1


def test_where_on_a_recorded_condition_records_no_guard(tape):
    x = Value(1.5)
    a = x * 2
    b = -x
    y = jitad.where(jitad.greater(x, 0), a, b)
    assert y.data == 3.0
    assert "guard" not in tape.names
    assert tape.names[-4:] == ["lt", "where_true", "where_false", "add"]
    assert jitad.gradients(y, x) == 2.0
    z = jitad.where(jitad.greater(x, 2), a, b)
    assert z.data == -1.5
    assert jitad.gradients(z, x) == -1.0
    assert "guard" not in tape.names


def test_where_on_a_python_bool_keeps_the_guard_of_its_comparison(tape):
    x = Value(1.5)
    y = jitad.where(x > 0, x * 2, -x)
    assert y.data == 3.0
    assert tape.names.count("guard") == 1
    assert "where_true" not in tape.names


def test_values_are_hashable_by_identity(tape):
    x = Value(1.0)
    z = Value(1.0)
    assert len({x, z}) == 2
    assert {x: 1}[x] == 1


# --- tapes, scopes, resets ----------------------------------------------------------------------


def test_with_tape_scopes_recording_and_nests():
    outer = jitad.Tape()
    inner = jitad.Tape()
    with outer:
        x = Value(1.0)
        with inner:
            z = Value(2.0)
            z * 2
        x * 3
    assert x.tape is outer
    assert z.tape is inner
    assert len(outer) == 2
    assert len(inner) == 2


def test_an_exception_in_a_with_block_restores_the_outer_tape():
    outer = jitad.Tape()
    with outer:
        with pytest.raises(ZeroDivisionError):
            with jitad.Tape():
                1 / 0
        x = Value(1.0)
    assert x.tape is outer
    assert len(outer) == 1


def test_reset_of_an_outer_tape_while_an_inner_one_records():
    outer = jitad.Tape()
    with outer:
        x = Value(1.0)
        with jitad.Tape():
            outer.reset()
            Value(2.0)
        z = Value(3.0)  # on the outer tape's new storage
        assert len(outer) == 1
        with pytest.raises(StaleValueError):
            x + z
        assert (z * 2).data == 6.0


def test_reset_makes_old_values_stale(tape):
    x = Value(1.0)
    y = x * 2
    y.backward()
    tape.reset()
    assert len(tape) == 0
    fresh = Value(5.0)  # takes index 0, as x had: x must not read it
    assert len(tape) == 1
    for use in (lambda: x + 1, lambda: x * fresh, lambda: fresh * x, lambda: jitad.sin(x), lambda: x > 0):
        with pytest.raises(StaleValueError):
            use()
    with pytest.raises(StaleValueError):
        x.grad
    with pytest.raises(StaleValueError):
        x.grad = 1.0
    with pytest.raises(StaleValueError):
        y.backward()
    with pytest.raises(StaleValueError):
        jitad.gradients(y, [x])
    with pytest.raises(StaleValueError):
        jitad.gradients(fresh * 2, [x])
    assert repr(x) == "Value(data=1.0, grad=<tape reset>)"
    assert tape.names == ["leaf", "mul"]  # fresh and fresh * 2: nothing from the failed uses
    assert (fresh * 2).data == 10.0
    assert fresh.grad == 0.0


def test_reset_outside_the_with_block():
    t = jitad.Tape()
    with t:
        x = Value(1.0)
    t.reset()
    with t:
        with pytest.raises(StaleValueError):
            x + 1
        assert len(t) == 0


def test_value_outside_its_tapes_scope_is_rejected():
    with jitad.Tape():
        x = Value(1.0)
    with pytest.raises(StaleValueError):
        x * 2  # the thread's default tape is active again
    y = None
    with jitad.Tape() as t:
        y = Value(2.0) * 3
    assert jitad.gradients(y, [y]).tolist() == [1.0]  # reading a finished tape is fine
    y.backward()
    assert len(t) == 2


def test_a_tape_is_entered_only_in_the_thread_that_made_it():
    t = jitad.Tape()
    errors = []

    def enter():
        try:
            with t:
                pass
        except RuntimeError as e:
            errors.append(e)

    worker = threading.Thread(target=enter)
    worker.start()
    worker.join()
    assert len(errors) == 1


def test_a_value_from_another_threads_tape_is_rejected():
    with jitad.Tape():
        x = Value(1.0)
    caught = []

    def use():
        with jitad.Tape():
            for attempt in (lambda: x * 2, lambda: Value(1.0) + x, lambda: jitad.exp(x)):
                try:
                    attempt()
                except StaleValueError as e:
                    caught.append(e)

    worker = threading.Thread(target=use)
    worker.start()
    worker.join()
    assert len(caught) == 3
    assert "thread" in str(caught[0])


def test_threads_record_at_once_and_each_gets_its_gradients():
    n_threads = 6
    steps = 2000
    barrier = threading.Barrier(n_threads)
    results = {}

    def work(k):
        with jitad.Tape() as t:
            x = Value(0.1 * (k + 1))
            z = Value(float(k))
            barrier.wait()  # record in all threads at the same time
            y = x
            for _ in range(steps):
                y = y * 0.999 + x * z
            y.backward()
            results[k] = (y.data, x.grad, z.grad, len(t))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(n_threads))
    r = 0.999
    for k, (y, dx, dz, n) in results.items():
        x0 = 0.1 * (k + 1)
        z0 = float(k)
        # y_N = r^N x + x z (1 - r^N) / (1 - r)
        geometric = (1 - r**steps) / (1 - r)
        assert y == pytest.approx(r**steps * x0 + x0 * z0 * geometric, rel=1e-10)
        assert dx == pytest.approx(r**steps + z0 * geometric, rel=1e-10)
        assert dz == pytest.approx(x0 * geometric, rel=1e-10)
        assert n == 2 + 3 * steps


def test_each_thread_starts_with_its_own_default_tape():
    seen = []

    def record():
        x = Value(2.0)
        seen.append((x.tape, len(x.tape)))

    workers = [threading.Thread(target=record) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert seen[0][0] is not seen[1][0]
    assert seen[0][1] == seen[1][1] == 1


# --- long chains ----------------------------------------------------------------------------------


def test_a_million_dependent_ops_record_and_sweep_without_recursion(tape):
    n = 10**6
    x = Value(0.5)
    y = x
    middle = None
    for i in range(n):
        y = y + x  # y_i = (i + 1) x, every entry depends on the one before
        if i == n // 2:
            middle = y
    assert len(tape) == n + 1
    assert y.data == pytest.approx((n + 1) * 0.5)
    np.testing.assert_array_equal(jitad.gradients(y, [x, middle]), [n + 1, 1.0])
    y.backward()
    assert x.grad == n + 1
    assert middle.grad == 1.0


def test_a_long_chain_of_unary_ops(tape):
    n = 200_000
    x = Value(0.3)
    y = x
    for _ in range(n):
        y = y.sin()
    # d sin^n(x) / dx = prod cos(sin^k(x)), computed in floats
    v = 0.3
    d = 1.0
    for _ in range(n):
        d *= math.cos(v)
        v = math.sin(v)
    assert y.data == v
    assert jitad.gradients(y, x) == pytest.approx(d, rel=1e-9)


# --- the backward kernel on hand-built tapes -----------------------------------------------------


def _hand_tape(entries):
    """Columns a, b, da, db from (a, b, da, db) rows."""
    a, b, da, db = (np.array(column) for column in zip(*entries))
    return a.astype(np.int32), b.astype(np.int32), da.astype(float), db.astype(float)


def test_backward_kernel_on_a_hand_built_tape():
    # x0 = 2, x1 = 3; e2 = x0 * x1; e3 = e2 + x0; e4 = sin(e3)
    a, b, da, db = _hand_tape(
        [
            (-1, -1, 0.0, 0.0),
            (-1, -1, 0.0, 0.0),
            (0, 1, 3.0, 2.0),
            (2, 0, 1.0, 1.0),
            (3, -1, math.cos(8.0), 0.0),
        ]
    )
    adj = np.zeros(5)
    adj[4] = 1.0
    kernels.backward(a, b, da, db, adj, 4)
    c = math.cos(8.0)
    np.testing.assert_allclose(adj, [4 * c, 2 * c, c, c, 1.0], rtol=1e-15)


def test_backward_kernel_starts_at_last_and_skips_zero_adjoints():
    # e2 = sqrt(x0) at x0 = 0 (partial inf), e3 = 0 * e2 + x0 (a constant 0 factor)
    a, b, da, db = _hand_tape(
        [
            (-1, -1, 0.0, 0.0),
            (-1, -1, 0.0, 0.0),
            (0, -1, math.inf, 0.0),
            (2, 0, 0.0, 1.0),
            (3, 1, 5.0, 5.0),  # after `last`: must not be swept
        ]
    )
    adj = np.zeros(5)
    adj[3] = 1.0
    kernels.backward(a, b, da, db, adj, 3)
    np.testing.assert_array_equal(adj, [1.0, 0.0, 0.0, 1.0, 0.0])


def test_forward_kernel_reproduces_the_recorded_tape(tape):
    x = Value(0.7)
    z = Value(-1.3)
    y = jitad.atan2(x, z) * jitad.exp(x) + 2 / z - z**3
    assert z < x  # a comparison and its guard
    n = len(tape)
    val = tape.value.copy()
    val[2:] = np.nan  # sources keep their values; everything else is recomputed
    da = np.full(n, np.nan)
    db = np.full(n, np.nan)
    failed = kernels.forward(tape.op, tape.a, tape.b, tape.const, val, da, db, 0, n)
    assert failed == -1
    np.testing.assert_allclose(val, tape.value, rtol=1e-15)
    computed = tape.op >= kernels.FIRST_COMPUTED
    np.testing.assert_allclose(da[computed], tape.da[computed], rtol=1e-15)
    np.testing.assert_allclose(db[computed], tape.db[computed], rtol=1e-15)
    assert y.data == val[tape.names.index("sub")]
