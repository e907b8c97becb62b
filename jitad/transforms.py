"""JAX-style transforms: ``grad(f)`` and friends trace ``f`` on first use, keep one
``TapeFunction`` per input length and parameter shapes, and replay it afterwards."""

import threading

import numpy as np

from .trace import trace


class _Transform:
    def __init__(self, f, method, retrace):
        self._f = f
        self._method = method
        self._retrace = retrace
        self._traced = {}
        self._lock = threading.Lock()
        self.__wrapped__ = f
        self.__name__ = f"{method}({getattr(f, '__name__', 'f')})"
        self.__doc__ = getattr(f, "__doc__", None)

    def _function(self, x, args):
        n = np.shape(x)[0] if np.ndim(x) == 1 else None
        key = (n, tuple(np.shape(a) for a in args))  # the TapeFunction checks the values
        F = self._traced.get(key)
        if F is None:
            F = trace(self._f, x, *args, retrace=self._retrace)
            with self._lock:
                F = self._traced.setdefault(key, F)
        return F

    def __repr__(self):
        return f"<jitad.{self.__name__}>"

    def __reduce__(self):
        # Pickles as the function it transforms (its lock and traced tapes stay behind).
        return type(self), (self._f, self._method, self._retrace)


class _Plain(_Transform):
    def __call__(self, x, *args):
        return getattr(self._function(x, args), self._method)(x, *args)


class _Hvp(_Transform):
    def __call__(self, x, v, *args):
        return self._function(x, args).hvp(x, v, *args)


def grad(f, retrace="auto"):
    """``grad(f)(x, *params)`` is ∇f(x), an ndarray (SciPy's ``jac=``)."""
    return _Plain(f, "grad", retrace)


def value_and_grad(f, retrace="auto"):
    """``value_and_grad(f)(x, *params)`` is ``(f(x), ∇f(x))`` (SciPy's ``jac=True``)."""
    return _Plain(f, "value_and_grad", retrace)


def jacobian(f, retrace="auto"):
    """``jacobian(f)(x, *params)`` is the (m, n) Jacobian of a vector-valued f."""
    return _Plain(f, "jacobian", retrace)


def hessian(f, retrace="auto"):
    """``hessian(f)(x, *params)`` is the (n, n) Hessian (SciPy's ``hess=``)."""
    return _Plain(f, "hessian", retrace)


def hvp(f, retrace="auto"):
    """``hvp(f)(x, v, *params)`` is H(x) v, exact (SciPy's ``hessp=``)."""
    return _Hvp(f, "hvp", retrace)
