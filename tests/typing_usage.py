"""Checked by mypy (``[tool.mypy] files``), not collected by pytest (it runs, though): the
public API's types as a user's code sees them. ``assert_type`` fails the check when a
result is not exactly that type."""

from typing import Any

import numpy as np
from numpy.typing import NDArray
from typing_extensions import assert_type

import jitad
from jitad import Value

x, y = Value(1.5), Value(0.5)
f = (y.sin() + 1) / (y + x.exp()) + x * y
assert_type(f, Value)
assert_type(x + 2, Value)
assert_type(2 * x, Value)
assert_type(1 - x, Value)
assert_type(x**y, Value)
assert_type(2.0**x, Value)
assert_type(-x, Value)
assert_type(abs(x), Value)
assert_type(round(x), Value)
assert_type(divmod(x, 2), tuple[Value, Value])
assert_type(x < y, bool)
assert_type(x == 1.0, bool)
assert_type(x.relu().tanh().sigmoid(), Value)
assert_type(x.data, float)
assert_type(x.grad, float)
assert_type(x.item(), float)
f.backward()

assert_type(jitad.exp(x), Value)
assert_type(jitad.exp(2.0), float)
assert_type(jitad.sin(np.zeros(3)), NDArray[np.object_])
assert_type(jitad.atan2(x, 1.0), Value)
assert_type(jitad.maximum(0.0, x), Value)
assert_type(jitad.hypot(3.0, 4.0), float)
assert_type(jitad.greater(x, 0), Value)
assert_type(jitad.where(jitad.less(x, y), x, y), Value)
assert_type(jitad.clip(x, 0.0, 1.0), Value)
assert_type(jitad.gradients(f, [x, y]), NDArray[np.float64])
assert_type(jitad.gradients(f, [x, y], create_graph=True), NDArray[np.object_])
x.data -= 0.1 * x.grad
x.grad = None

with jitad.Tape() as tape:
    assert_type(len(tape), int)
    assert_type(tape.table(), str)
    assert_type(tape.value, NDArray[np.float64])
    assert_type(tape.a, NDArray[np.int32])
    assert_type(tape.names, list[str])


def rosen(x: Any) -> Any:
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))


x0 = np.zeros(3)
assert_type(jitad.grad(rosen)(x0), NDArray[np.float64])
assert_type(jitad.grad(lambda t: t * t)(3.0), float)
assert_type(jitad.value_and_grad(rosen)(x0), tuple[float, NDArray[np.float64]])
assert_type(jitad.hessian(rosen)(x0), NDArray[np.float64])
assert_type(jitad.hvp(rosen)(x0, x0), NDArray[np.float64])
assert_type(jitad.grad(lambda t: (rosen(t), t[0]), argnums=(0,), has_aux=True)(x0), Any)

F = jitad.trace(rosen, x0)
assert_type(F, jitad.TapeFunction)
assert_type(F.grad(x0), NDArray[np.float64])
assert_type(F.value_and_grad(x0), tuple[float, NDArray[np.float64]])
assert_type(F.hvp(x0, x0), NDArray[np.float64])
assert_type(F.grad_batch(np.ones((4, 3))), NDArray[np.float64])
assert_type(F.value_and_grad_batch(np.ones((4, 3))), tuple[NDArray[np.float64], NDArray[np.float64]])
