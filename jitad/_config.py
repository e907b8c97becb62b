"""Numba settings for every jitad kernel, read in this one module: compile options, where
compiled kernels are cached, and the one-line notice when a first compile is slow.

Kernels never use fastmath, and use NumPy's error model so ``1/0`` is ``inf``, not an
exception. ``JITAD_CACHE=0`` turns the on-disk cache off. The cache lives outside the
package (an installed jitad may be read-only, and files left in ``jitad/__pycache__``
would make an uninstalled jitad importable): ``NUMBA_CACHE_DIR`` when set, else
``JITAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/jitad/numba`` (``~/.cache/jitad/numba``),
else a private directory under the system temp dir; with none writable, jitad runs
uncached and warns once.
"""

import hashlib
import os
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numba
from numba.core import event
from numba.core.caching import (
    CompileResultCacheImpl,
    FunctionCache,
    _CacheLocator,
    _SourceFileBackedLocatorMixin,
)

_OPTIONS = dict(nogil=True, fastmath=False, error_model="numpy")
SLOW_COMPILE_S = 1.0  # a first compile longer than this is announced on stderr

# Numba keys a cached kernel on its own source file only, but the op table (ops.py) is
# compiled into every kernel: key the cache on the sources kernels are built from as well,
# so an edited op can never run stale machine code.
_HERE = Path(__file__).parent
_SOURCES = hashlib.sha256(
    b"".join((_HERE / name).read_bytes() for name in ("ops.py", "kernels.py", "_config.py"))
).hexdigest()


def _candidates():
    if numba.config.CACHE_DIR:
        yield Path(numba.config.CACHE_DIR)
    if os.environ.get("JITAD_CACHE_DIR"):
        yield Path(os.environ["JITAD_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        yield Path(xdg) / "jitad" / "numba"
    home = os.environ.get("HOME") or (os.path.expanduser("~") if os.name != "nt" else None)
    if home and home != "~":
        yield Path(home) / ".cache" / "jitad" / "numba"
    uid = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    yield Path(tempfile.gettempdir()) / f"jitad-{uid}" / "numba"


def _writable(path):
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Cached kernels are machine code that jitad loads and runs: never use a directory
        # another user could have planted (a shared temp dir), nor one they can write to.
        if hasattr(os, "getuid"):
            st = path.stat()
            if st.st_uid != os.getuid() or st.st_mode & 0o022:
                return False
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _cache_dir():
    if os.environ.get("JITAD_CACHE", "1") == "0":
        return None
    tried = []
    for path in _candidates():
        if _writable(path):
            return path
        tried.append(str(path))
    warnings.warn(
        f"jitad: no writable directory for compiled kernels (tried {', '.join(tried)}); running "
        "uncached, so every new process compiles its kernels again. Set JITAD_CACHE_DIR to a "
        "writable directory, or JITAD_CACHE=0 to silence this warning.",
        RuntimeWarning,
        stacklevel=2,
    )
    return None


CACHE_DIR = _cache_dir()
CACHE = CACHE_DIR is not None


class _Locator(_SourceFileBackedLocatorMixin, _CacheLocator):
    """Numba's cache locator for jitad's kernels: always the directory chosen above."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = str(CACHE_DIR / self.get_suitable_cache_subpath(py_file))

    def get_cache_path(self):
        return self._cache_path

    @classmethod
    def from_function(cls, py_func, py_file):
        self = cls(py_func, py_file)
        self.ensure_cache_path()  # CACHE_DIR was probed: an error here is worth seeing
        return self


class _CacheImpl(CompileResultCacheImpl):
    _locator_classes = [_Locator]


class _Cache(FunctionCache):
    _impl_class = _CacheImpl

    def _index_key(self, sig, codegen):
        return (*super()._index_key(sig, codegen), _SOURCES)


class _Compiles(event.Listener):
    """How many Numba compiles are running (a cache load is not one)."""

    running = 0

    def on_start(self, ev):
        _Compiles.running += 1

    def on_end(self, ev):
        _Compiles.running -= 1


event.register("numba:compile", _Compiles())


def _announce_slow_compiles(dispatcher, name):
    # Numba's C dispatcher calls _compile_for_args when no compiled version matches the
    # argument types; a load from the cache goes through it too, usually in milliseconds,
    # though the first one of a process sets up Numba's type system. A watcher, not a
    # cache lookup, decides: only a call still compiling after SLOW_COMPILE_S says so.
    compile_for_args = getattr(dispatcher, "_compile_for_args", None)
    if compile_for_args is None:  # NUMBA_DISABLE_JIT=1: a plain Python function
        return

    def compile_announced(*args, **kws):
        done = threading.Event()

        def watch():
            if done.wait(SLOW_COMPILE_S):
                return
            while not done.wait(0.1):
                if _Compiles.running:
                    where = f"cached in {CACHE_DIR}" if CACHE else "uncached: JITAD_CACHE=0"
                    print(
                        f"jitad: compiling the {name} kernel for these argument types; this happens once per "
                        f"machine ({where}), later processes load it in milliseconds",
                        file=sys.stderr,
                        flush=True,
                    )
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            return compile_for_args(*args, **kws)
        finally:
            done.set()

    dispatcher._compile_for_args = compile_announced


def kernel(fn=None, **overrides):
    """``numba.njit`` with jitad's settings; ``@kernel`` or ``@kernel(parallel=True)``."""
    if fn is None:
        return lambda f: kernel(f, **overrides)
    dispatcher = numba.njit(**{**_OPTIONS, **overrides})(fn)
    if CACHE:
        dispatcher._cache = _Cache(fn)
    _announce_slow_compiles(dispatcher, fn.__name__)
    return dispatcher


def inline(fn):
    """Compile a helper that LLVM inlines into every kernel that calls it; never called
    from Python on a hot path. LLVM's inlining (``forceinline``), not Numba's
    (``inline="always"``, which types the helper again at every call site): the same
    machine code, compiled several times faster."""
    return numba.njit(forceinline=True, error_model="numpy", fastmath=False)(fn)
