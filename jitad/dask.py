"""Beyond one machine: batched evaluation of a TapeFunction over a chunked ``dask.array``,
and many SciPy optimizations at once, on whatever Dask runs (threads, processes, or a
``dask.distributed`` cluster). The tape travels to the workers as validated arrays, with
the Python function when it can be pickled, so that a worker can re-record on a branch
change; each chunk of points runs the TapeFunction's batched kernels there.

Progress is Dask's own: ``compute(..., progress=True)`` (and ``minimize_many``) shows
``dask.diagnostics.ProgressBar``, or ``distributed.progress`` on a cluster, once a
computation has run for ``jitad.progress.DELAY_S`` seconds.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
from numpy.typing import ArrayLike

from . import io
from . import progress as _progress
from .trace import TapeFunction, _real_array
from .transforms import hessian, hvp, value_and_grad

if TYPE_CHECKING:
    from scipy.optimize import OptimizeResult

__all__ = ["batch", "compute", "grad_batch", "minimize_many", "value_and_grad_batch"]


def batch(F: TapeFunction, X: ArrayLike | da.Array, *args: ArrayLike | da.Array) -> da.Array:
    """``F`` at each row of the (K, n) dask array ``X``: a lazy dask array of shape (K,),
    or (K, m) for a function with m outputs. Chunks of rows are evaluated in parallel.

    ``args`` are ``F``'s parameters: shared by every point (the traced shapes), or one per
    point (a leading dimension K; NumPy or dask arrays)."""
    m = None if F._scalar else F.tape.outputs.size
    return _map(F, X, args, "batch", m)


def grad_batch(F: TapeFunction, X: ArrayLike | da.Array, *args: ArrayLike | da.Array) -> da.Array:
    """∇F at each row of the (K, n) dask array ``X``: a lazy (K, n) dask array."""
    F._scalar_output("grad_batch")
    return _map(F, X, args, "grad_batch", F._n)


def value_and_grad_batch(
    F: TapeFunction, X: ArrayLike | da.Array, *args: ArrayLike | da.Array
) -> tuple[da.Array, da.Array]:
    """``(values, grads)``: lazy dask arrays of shapes (K,) and (K, n). Both come from the
    same tasks: ``dask.compute(values, grads)`` evaluates each chunk once."""
    F._scalar_output("value_and_grad_batch")
    both = _map(F, X, args, "value_and_grad_batch", F._n + 1)
    return both[:, 0], both[:, 1:]


def minimize_many(
    f: Callable[..., Any],
    X0: ArrayLike | da.Array,
    *,
    method: str = "L-BFGS-B",
    args: Sequence[Any] = (),
    progress: bool | None = None,
    **kwargs: Any,
) -> list[OptimizeResult]:
    """``scipy.optimize.minimize`` from each row of ``X0`` (K, n), run as Dask tasks (on
    the default ``dask.distributed`` client when there is one); returns the K
    ``OptimizeResult``s in order. Each task traces ``f`` with ``jitad.value_and_grad`` and
    passes ``jac=True``; ``args`` are ``f``'s parameters. ``hessp=True`` (or ``hess=True``)
    uses ``jitad.hvp(f)`` (``jitad.hessian(f)``) on the worker; other ``kwargs`` go to
    ``minimize`` as they are (they must pickle). ``progress`` as in ``compute``."""
    X0 = np.asarray(X0.compute() if isinstance(X0, da.Array) else X0, dtype=np.float64)
    if X0.ndim != 2:
        raise ValueError(f"X0 must hold one starting point per row, shape (K, n); got shape {X0.shape}")
    tasks = [dask.delayed(_minimize, pure=False)(f, x0, method, tuple(args), kwargs) for x0 in X0]
    return list(compute(*tasks, progress=progress))


def compute(*collections: Any, progress: bool | None = None) -> tuple[Any, ...]:
    """``dask.compute(*collections)``, with Dask's progress bar once the computation has run
    ``jitad.progress.DELAY_S`` seconds (short ones print nothing): ``ProgressBar`` on stderr
    with Dask's own schedulers, ``distributed.progress`` with a ``distributed`` client.
    ``progress=None`` shows it when stderr is a terminal, as everywhere in jitad."""
    if not _progress.wanted(progress):
        return dask.compute(*collections)
    client = _default_client()
    if client is None:
        from dask.diagnostics import ProgressBar

        with ProgressBar(minimum=_progress.DELAY_S, out=sys.stderr):
            return dask.compute(*collections)
    from distributed import progress as show

    futures = client.compute(list(collections))
    deadline = time.monotonic() + _progress.DELAY_S
    while time.monotonic() < deadline and not all(f.done() for f in futures):
        time.sleep(0.05)
    if not all(f.done() for f in futures):
        show(futures, notebook=False)  # a text bar; returns when every future is done
    return tuple(client.gather(futures))


def _default_client() -> Any:
    """The ``distributed`` client that ``dask.compute`` runs on, or None."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:  # no client: Dask's own schedulers
        return None


def _minimize(f, x0, method, args, kwargs):
    from scipy.optimize import minimize

    kwargs = dict(kwargs)
    if kwargs.get("hessp") is True:
        kwargs["hessp"] = hvp(f)
    if kwargs.get("hess") is True:
        kwargs["hess"] = hessian(f)
    return minimize(value_and_grad(f), x0, jac=True, method=method, args=args, **kwargs)


# --- the blocks -----------------------------------------------------------------------------


def _map(F, X, args, method, width):
    """One task per chunk of rows: ``F.<method>`` on the chunk; the result has shape (k,)
    when width is None, else (k, width)."""
    X = _points(F, X)
    shared, per_point = _split_params(F, X, args)
    ship = dask.delayed(_Shipped(F, shared), pure=False, traverse=False)
    pairs = [ship, None, method, None, X, ("i", "j")]
    for k, p in per_point:
        pairs += [p, ("i",) + tuple(f"p{k}.{d}" for d in range(p.ndim - 1))]
    out = ("i",) if width is None else ("i", "w")
    return da.blockwise(
        _block,
        out,
        *pairs,
        new_axes={} if width is None else {"w": width},
        concatenate=True,
        dtype=np.float64,
        meta=np.empty((0,) * len(out)),
    )


def _block(ship, method, X, *point_params):
    F = ship.get()
    blocks = iter(point_params)
    args = [next(blocks) if p is None else p for p in ship.params]
    # TapeFunction serializes parallel launches itself where Numba's threading layer needs it.
    result = getattr(F, method)(X, *args, progress=False)  # a chunk is a small part: Dask shows progress
    if method == "value_and_grad_batch":
        values, grads = result
        return np.column_stack((values, grads))
    return result


def _points(F, X):
    """X as a float64 dask array (K, n) with all n columns in one chunk."""
    X = X if isinstance(X, da.Array) else da.asarray(np.asarray(X))
    if X.ndim != 2 or X.shape[1] != F._n:
        raise ValueError(f"X must have shape (K, {F._n}), one point per row; got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"X must hold real numbers, got dtype {X.dtype}")
    if X.dtype != np.float64:
        X = X.astype(np.float64)
    if X.numblocks[1] != 1:
        X = X.rechunk({1: -1})
    return X


def _split_params(F, X, args):
    """Shared parameters (the traced shapes; checked now) travel with the tape; per-point
    ones (leading dimension K) become dask arrays chunked like the rows of X."""
    shapes = F._param_shapes
    if len(args) != len(shapes):
        raise TypeError(f"expected {len(shapes)} extra argument(s) (parameters), got {len(args)}")
    shared, per_point = [], []
    for k, (arg, shape) in enumerate(zip(args, shapes)):
        if isinstance(arg, da.Array):
            if arg.dtype.kind not in "biuf":
                raise TypeError(f"parameter {k} must hold real numbers, got dtype {arg.dtype}")
            p = arg.astype(np.float64)
        else:
            p = _real_array(arg, f"parameter {k}")
            if p.shape == shape:
                shared.append(p)
                continue
        if p.shape[1:] != shape or p.ndim != len(shape) + 1:
            per = (X.shape[0],) + shape
            raise ValueError(f"parameter {k} has shape {p.shape}; expected {shape} (shared) or {per} (per point)")
        if not isinstance(p, da.Array):
            p = da.from_array(p, chunks=-1)
        if p.shape[0] != X.shape[0]:
            raise ValueError(f"parameter {k} gives {p.shape[0]} points, X has {X.shape[0]}")
        shared.append(None)
        per_point.append((k, p.rechunk((X.chunks[0],) + tuple((d,) for d in shape))))
    return shared, per_point


class _Shipped:
    """A TapeFunction and its shared parameters on their way to the workers. It pickles as
    the tape's arrays plus, when it can be pickled, the Python function (as ``io.reduce``), and
    rebuilds (and validates) the TapeFunction once per process, on first use, so the chunks
    a worker evaluates share its re-recorded branches."""

    def __init__(self, F, params, payload=None):
        self._F = F
        self._payload = payload
        self._lock = threading.Lock()
        self.params = params

    def get(self):
        with self._lock:
            if self._F is None:
                self._F = io.restore(*self._payload)
            return self._F

    def __reduce__(self):
        with self._lock:
            if self._payload is None:
                self._payload = (io.to_arrays(self._F), *io.function_payload(self._F))
        return _Shipped, (None, self.params, self._payload)
