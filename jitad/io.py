"""Persistence: a TapeFunction's tape as plain arrays, for ``.npz`` files (no pickle),
pickles and Dask. Every array is validated on the way in, before any kernel reads it:
the kernels do no bounds checks, so an unchecked operand index is a memory-safety hole.
"""

from __future__ import annotations

import json
import numbers
import os
import pickle
from collections.abc import Callable
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from . import ops
from .trace import Program, TapeFunction

FORMAT = "jitad-tape"
VERSION = 1

# The tape's columns and index arrays with their exact dtypes: nothing is cast on load.
COLUMNS = {"op": np.uint8, "a": np.int32, "b": np.int32, "const": np.float64, "value": np.float64}
INDICES = {"inputs": np.int32, "params": np.int32, "outputs": np.int32, "guards": np.int32}
_META_KEYS = {"format", "version", "scalar", "retrace", "param_shapes", "sites", "lines"}
_ARITY = np.array([op.arity for op in ops.OPS], dtype=np.int8)
_IS_COMPARISON = np.isin(np.arange(len(ops.OPS)), sorted(ops.COMPARISONS))
# Tapes longer than this are refused by ``load`` unless ``max_entries=`` raises it: about
# 0.4 GB of columns, read only after every array's header has been checked against it.
MAX_ENTRIES = 2**24
_META_BYTES_PER_ENTRY = 512  # room for a source line per entry (debug mode) in 'meta'

_FROM_FILE = "it was loaded from a file, which holds the tape but not the Python function"
_FROM_ARRAYS = "it was rebuilt from its arrays (jitad.io.from_arrays), which hold the tape but not the Python function"


class InvalidTape(ValueError):
    """A saved or transmitted tape is malformed; it was refused before any replay."""


def save(F: TapeFunction, path: str | os.PathLike[str] | IO[bytes]) -> None:
    """Write ``F``'s current tape to ``path`` (a path or a binary file) as an ``.npz``
    archive of plain arrays: no pickle, so loading it cannot run code. The Python function
    is not saved: the loaded TapeFunction replays, but cannot re-record on a branch change.
    The file is written at ``path`` exactly (no ``.npz`` suffix is added)."""
    _check_path(path)
    arrays = to_arrays(F)
    # NumPy's stubs fear a key named allow_pickle in **arrays (a keyword since NumPy 2.1).
    if hasattr(path, "write"):
        np.savez(path, **arrays)  # type: ignore[arg-type]
        return
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]


def load(path: str | os.PathLike[str] | IO[bytes], max_entries: int = MAX_ENTRIES) -> TapeFunction:
    """Read a tape written by ``save`` and return a ``TapeFunction`` that replays it.

    Raises ``InvalidTape`` (a ``ValueError``) naming the problem when the file is not such
    an archive or any array in it is inconsistent; ``OSError`` when it cannot be opened.
    Every array's header (dtype, shape) is checked against the others and against
    ``max_entries`` (2**24 by default) before any data is read, so a small file cannot
    make ``load`` allocate more than a tape of ``max_entries`` entries needs.
    """
    _check_path(path)
    if isinstance(max_entries, bool) or not isinstance(max_entries, numbers.Integral) or max_entries < 1:
        raise ValueError(f"max_entries must be a positive integer, got {max_entries!r}")
    if hasattr(path, "read"):
        return from_arrays(_read_archive(path, int(max_entries)), _FROM_FILE)
    with open(path, "rb") as fh:
        return from_arrays(_read_archive(fh, int(max_entries)), _FROM_FILE)


def _check_path(path):
    # open(3) would adopt, and then close, the caller's file descriptor 3.
    if isinstance(path, (int, np.integer)) and not isinstance(path, bool) or isinstance(path, bool):
        raise TypeError(f"a path or a file object is needed, got {type(path).__name__} {path!r}")


def _read_archive(fh, max_entries):
    try:
        magic = fh.read(len(np.lib.format.MAGIC_PREFIX))
        fh.seek(-len(magic), 1)
    except Exception as e:  # noqa: BLE001 - unreadable or unseekable
        raise InvalidTape(f"not a jitad tape archive (.npz): {type(e).__name__}: {e}") from None
    if magic == np.lib.format.MAGIC_PREFIX:
        # np.load would read a bare .npy array in full, whatever its header claims.
        raise InvalidTape("not a jitad tape archive (.npz): found a single ndarray")
    try:
        archive = np.load(fh, allow_pickle=False)  # an .npz: members are read on access
    except Exception as e:  # noqa: BLE001 - any failure to parse is a bad file
        raise InvalidTape(f"not a jitad tape archive (.npz): {type(e).__name__}: {e}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InvalidTape(f"not a jitad tape archive (.npz): found a single {type(archive).__name__}")
    with archive:
        names = set(archive.files)
        _check_keys(names)
        _check_headers({name: _header(archive, name) for name in names}, max_entries)
        arrays = {}
        for name in sorted(names):
            try:
                arrays[name] = archive[name]
            except Exception as e:  # noqa: BLE001 - truncated, corrupted or object arrays
                raise InvalidTape(f"array {name!r} cannot be read: {type(e).__name__}: {e}") from None
    return arrays


def _header(archive, name):
    """(shape, dtype) of member ``name`` from its .npy header, without reading its data."""
    member = name if name in archive.zip.namelist() else name + ".npy"
    try:
        with archive.zip.open(member) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f".npy format version {version} (a jitad tape uses 1.0 or 2.0)")
    except Exception as e:  # noqa: BLE001 - truncated, corrupted or unsupported headers
        raise InvalidTape(f"array {name!r} cannot be read: {type(e).__name__}: {e}") from None
    return shape, dtype


def _check_headers(headers, max_entries):
    """Dtypes, ranks and lengths from the headers: consistent and within ``max_entries``,
    before any array's data is read (a compressed member can claim gigabytes)."""
    for name, (shape, dtype) in headers.items():
        expected = np.dtype({**COLUMNS, **INDICES, "meta": np.uint8}[name])
        if dtype.hasobject:
            raise InvalidTape(f"array {name!r} cannot be read: it holds Python objects (pickles), never loaded")
        if dtype != expected:
            raise InvalidTape(f"{name!r} must have dtype {expected}, got {dtype}")
        if len(shape) != 1:
            raise InvalidTape(f"{name!r} must be 1-D, got shape {shape}")
    n = headers["op"][0][0]
    if n == 0:
        raise InvalidTape("the tape has no entries")
    if n > max_entries:
        raise InvalidTape(
            f"the tape has {n} entries, more than max_entries = {max_entries}; "
            "pass a larger max_entries= to load a tape this long"
        )
    for name in COLUMNS:
        if headers[name][0][0] != n:
            raise InvalidTape(f"column {name!r} has {headers[name][0][0]} entries, 'op' has {n}")
    for name in INDICES:
        # inputs, params and guards are distinct entries; outputs may repeat one
        limit = max_entries if name == "outputs" else n
        if headers[name][0][0] > limit:
            raise InvalidTape(f"{name!r} lists {headers[name][0][0]} entries, the tape has {n}")
    meta_limit = 2**20 + _META_BYTES_PER_ENTRY * n
    if headers["meta"][0][0] > meta_limit:
        raise InvalidTape(f"'meta' has {headers['meta'][0][0]} bytes, more than {meta_limit} for a tape of {n} entries")


def to_arrays(F: TapeFunction) -> dict[str, NDArray[Any]]:
    """``F``'s current tape as a dict of NumPy arrays (copies), the format of ``save``:
    the columns ``op a b const value``, the index arrays ``inputs params outputs guards``
    and ``meta``, UTF-8 JSON bytes holding the format version, parameter shapes, whether
    the output is one Value, the retrace mode, and the source lines of the guards (and of
    every entry, when traced under ``jitad.debug_nans``)."""
    p = F.tape
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "scalar": bool(F._scalar),
        "retrace": F._retrace,
        "param_shapes": [[int(d) for d in shape] for shape in p.param_shapes],
        "sites": {str(int(k)): str(v) for k, v in p.sites.items()},
        "lines": {str(int(k)): str(v) for k, v in getattr(p, "lines", {}).items()},
    }
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8).copy()}
    for name in (*COLUMNS, *INDICES):
        arrays[name] = getattr(p, name).copy()
    return arrays


def from_arrays(arrays: dict[str, NDArray[Any]], _origin: str = _FROM_ARRAYS) -> TapeFunction:
    """The ``TapeFunction`` for arrays made by ``to_arrays``, after validating every one:
    exact dtypes (nothing is converted), 1-D, equal lengths, opcodes in the op table,
    operands pointing only to earlier entries, inputs/parameters/outputs/guards in range
    and of the right kind. Raises ``InvalidTape`` naming the first problem found. The
    arrays are copied first, so changing them afterwards cannot affect the result."""
    if not isinstance(arrays, dict):
        raise InvalidTape(f"expected a dict of arrays, got {type(arrays).__name__}")
    _check_keys(set(arrays))
    meta = _meta(arrays["meta"])
    col = {name: _array(arrays[name], name, dtype) for name, dtype in {**COLUMNS, **INDICES}.items()}
    _check_tape(col)
    param_shapes = _check_meta(meta, col)
    program = Program(
        op=col["op"],
        a=col["a"],
        b=col["b"],
        const=col["const"],
        value=col["value"],
        inputs=col["inputs"],
        params=col["params"],
        outputs=col["outputs"],
        param_shapes=param_shapes,
        sites={int(k): v for k, v in meta["sites"].items()},
        lines={int(k): v for k, v in meta["lines"].items()},
    )
    F = TapeFunction(None, program, meta["scalar"], retrace=meta["retrace"])
    F._no_function = _origin  # why a branch change cannot re-record (see TapeFunction._run)
    return F


# --- validation ------------------------------------------------------------------------


def _check_keys(names):
    expected = {"meta", *COLUMNS, *INDICES}
    missing = sorted(expected - names)
    extra = sorted(names - expected)
    if missing:
        raise InvalidTape(f"not a jitad tape: missing array(s) {', '.join(missing)}")
    if extra:
        raise InvalidTape(f"not a jitad tape: unexpected array(s) {', '.join(map(repr, extra))}")


def _array(x, name, dtype):
    """A private C-contiguous copy of x after checking its type, dtype and rank exactly."""
    if not isinstance(x, np.ndarray):
        raise InvalidTape(f"{name!r} must be a NumPy array, got {type(x).__name__}")
    if x.dtype != np.dtype(dtype):
        raise InvalidTape(f"{name!r} must have dtype {np.dtype(dtype)}, got {x.dtype}")
    if x.ndim != 1:
        raise InvalidTape(f"{name!r} must be 1-D, got shape {x.shape}")
    return np.array(x, dtype=dtype, order="C", copy=True)


def _meta(raw):
    raw = _array(raw, "meta", np.uint8)
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise InvalidTape(f"'meta' is not UTF-8 JSON: {type(e).__name__}: {e}") from None
    if not isinstance(meta, dict):
        raise InvalidTape(f"'meta' must be a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise InvalidTape(f"not a jitad tape: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION or type(meta.get("version")) is not int:
        raise InvalidTape(
            f"tape format version {meta.get('version')!r} is not supported by this jitad (reads version {VERSION})"
        )
    if set(meta) != _META_KEYS:
        raise InvalidTape(f"'meta' must have exactly the keys {sorted(_META_KEYS)}, got {sorted(meta)}")
    if type(meta["scalar"]) is not bool:
        raise InvalidTape(f"meta 'scalar' must be true or false, got {meta['scalar']!r}")
    if meta["retrace"] not in ("auto", "raise"):
        raise InvalidTape(f"meta 'retrace' must be 'auto' or 'raise', got {meta['retrace']!r}")
    return meta


def _check_tape(col):
    op, a, b, const = col["op"], col["a"], col["b"], col["const"]
    n = op.shape[0]
    if n == 0:
        raise InvalidTape("the tape has no entries")
    for name in ("a", "b", "const", "value"):
        if col[name].shape[0] != n:
            raise InvalidTape(f"column {name!r} has {col[name].shape[0]} entries, 'op' has {n}")
    _refuse(op >= len(ops.OPS), "opcode {v} is not in the op table ({k} ops)", op, k=len(ops.OPS))

    arity = _ARITY[op]
    i = np.arange(n)
    a_earlier = (a >= 0) & (a < i)
    b_earlier = (b >= 0) & (b < i)
    is_source = arity == 0
    is_unary = arity == 1
    is_binary = arity == 2
    _refuse(is_source & ((a != -1) | (b != -1)), "a source ({name}) must have no operands (a = b = -1)", op)
    _refuse(is_unary & ~a_earlier, "operand a = {a} of a unary op ({name}) must point to an earlier entry", op, a=a)
    _refuse(is_unary & (b != -1), "a unary op ({name}) must have b = -1, got {b}", op, b=b)
    _refuse(
        is_binary & ~(a_earlier | (a == -1)),
        "operand a = {a} of a binary op ({name}) must be -1 or point to an earlier entry",
        op,
        a=a,
    )
    _refuse(
        is_binary & ~(b_earlier | (b == -1)),
        "operand b = {b} of a binary op ({name}) must be -1 or point to an earlier entry",
        op,
        b=b,
    )
    _refuse(is_binary & (a == -1) & (b == -1), "a binary op ({name}) must have at least one operand entry", op)

    is_guard = op == ops.GUARD
    guarded = np.where(is_guard, a, 0)  # a >= 0 for every unary op by now
    _refuse(is_guard & ~_IS_COMPARISON[op[guarded]], "a guard's operand a = {a} must be a comparison entry", op, a=a)
    _refuse(
        is_guard & (const != 0.0) & (const != 1.0), "a guard's recorded outcome must be 0 or 1, got {c}", op, c=const
    )

    inputs, params, outputs, guards = col["inputs"], col["params"], col["outputs"], col["guards"]
    _refuse_index(inputs, "inputs", n)
    _refuse_index(params, "params", n)
    _refuse_index(outputs, "outputs", n)
    _refuse_index(guards, "guards", n)
    if inputs.size and not np.all(op[inputs] == ops.LEAF):
        k = int(np.flatnonzero(op[inputs] != ops.LEAF)[0])
        raise InvalidTape(f"inputs[{k}] = {inputs[k]} must be a leaf entry, got {ops.NAMES[op[inputs[k]]]}")
    if np.unique(inputs).size != inputs.size:
        raise InvalidTape("inputs must be distinct entries")
    if not np.array_equal(params, np.flatnonzero(op == ops.PARAM)):
        raise InvalidTape("params must list every parameter entry (opcode 'param'), in order")
    if outputs.size == 0:
        raise InvalidTape("the tape has no outputs")
    if not np.array_equal(guards, np.flatnonzero(is_guard)):
        raise InvalidTape("guards must list every guard entry (opcode 'guard'), in order")


def _refuse(bad, message, op, **columns):
    """Raise naming the first entry where ``bad`` holds; the message may use {name} (the
    entry's op), {v} (its opcode) and {key} for each column in ``columns``."""
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    code = int(op[i])
    fields = {key: (col[i].item() if isinstance(col, np.ndarray) else col) for key, col in columns.items()}
    name = ops.NAMES[code] if code < len(ops.NAMES) else "?"
    raise InvalidTape(f"tape entry {i}: " + message.format(v=code, name=name, **fields))


def _refuse_index(idx, name, n):
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise InvalidTape(f"{name}[{k}] = {idx[k]} is not an entry of the tape (0 to {n - 1})")


def _check_meta(meta, col):
    """The parameter shapes as tuples, checked against the params; source lines checked too."""
    shapes = meta["param_shapes"]
    if not isinstance(shapes, list) or not all(
        isinstance(s, list) and all(type(d) is int and 0 <= d < 2**62 for d in s) for s in shapes
    ):
        raise InvalidTape(f"meta 'param_shapes' must be a list of shapes (lists of sizes), got {shapes!r:.200}")
    count = sum(int(np.prod(s, dtype=object)) for s in shapes)
    if count != col["params"].size:
        raise InvalidTape(f"meta 'param_shapes' describe {count} parameter values, the tape has {col['params'].size}")
    if meta["scalar"] and col["outputs"].size != 1:
        raise InvalidTape(f"a scalar function has one output, this tape lists {col['outputs'].size}")
    _check_lines(meta["sites"], "sites", "guard entries", {str(g) for g in col["guards"].tolist()})
    _check_lines(meta["lines"], "lines", "tape entries", None, col["op"].size)
    return tuple(tuple(s) for s in shapes)


def _check_lines(lines, key, what, entries, n=None):
    """``lines`` must map entries (decimal strings; ``entries`` or 0 to n - 1) to text."""
    if not isinstance(lines, dict):
        raise InvalidTape(f"meta {key!r} must be an object mapping {what} to source lines")
    for k, v in lines.items():
        ok = k in entries if entries is not None else k.isascii() and k.isdigit() and len(k) < 12 and int(k) < n
        if not ok or not isinstance(v, str):
            raise InvalidTape(f"meta {key!r} must map {what} to source lines, got {k!r}: {v!r:.100}")


# --- pickling with the Python function ---------------------------------------------------


def function_payload(F: TapeFunction) -> tuple[bytes, None] | tuple[None, str]:
    """``(bytes, None)``: ``F``'s Python function pickled (by cloudpickle when installed,
    so lambdas and closures travel too), or ``(None, why)`` when it cannot be."""
    if F._f is None:
        return None, getattr(F, "_no_function", _FROM_ARRAYS)
    try:
        import cloudpickle

        dumps = cloudpickle.dumps
    except ImportError:
        dumps = pickle.dumps
    try:
        return dumps(F._f), None
    except Exception as e:  # noqa: BLE001 - whatever the pickler refuses
        return None, f"its Python function could not be pickled ({type(e).__name__}: {e})"


def restore(arrays: dict[str, NDArray[Any]], function: bytes | None = None, why: str | None = None) -> TapeFunction:
    """The unpickling side of ``reduce``: the validated tape, and the Python function
    unpickled from ``function`` when that works here (else branch changes raise
    ``BranchChanged`` explaining ``why``). Unpickling runs code: only for trusted bytes."""
    F = from_arrays(arrays, why or _FROM_ARRAYS)
    if function is not None:
        try:
            F._f = pickle.loads(function)
        except Exception as e:  # noqa: BLE001 - e.g. its module is not importable here
            F._no_function = f"its Python function could not be unpickled here ({type(e).__name__}: {e})"
    return F


def reduce(F: TapeFunction) -> tuple[Callable[..., TapeFunction], tuple[Any, ...]]:
    """``F.__reduce__``: the tape's arrays and, when it can be pickled, the function."""
    return restore, (to_arrays(F), *function_payload(F))
