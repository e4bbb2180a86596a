"""The compiled inner loops of findleaks and of the chunk walks (kernel.c), loaded with ctypes.

kernel.c is built by `pip install` (pyproject.toml's ext-modules) into a plain shared library
next to this file; it has no Python entry point, only C functions called through ctypes, so it
needs a C compiler at install time but no Python headers. ctypes releases the GIL for the
length of each call, which lets the scan threads run on every core.

The arrays passed in are numpy arrays of the exact dtypes named here, contiguous and kept alive
by the caller for the length of the call (the Locator holds its own).
"""

from __future__ import annotations

import ctypes
import importlib.machinery
from pathlib import Path

from mdbpy.errors import MdbError

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_U64 = ctypes.c_uint64


class LocatorStruct(ctypes.Structure):
    """kernel.c's `locator`: the pointers of a Locator's arrays and its scalars."""

    _fields_ = [("base", _P), ("end", _P), ("n", _I64), ("lo", _U64), ("hi", _U64),
                ("rbase", _P), ("rend", _P), ("rstride", _P), ("rsize", _P), ("rfirst", _P),
                ("nruns", _I64), ("ilo", _P), ("ihi", _P), ("goff", _P), ("nisl", _I64),
                ("shift", _U64), ("before", _P)]


class PoolStruct(ctypes.Structure):
    """kernel.c's `pool_t`: the Gather's page cache (its arrays are the Gather's)."""

    _fields_ = [("keys", _P), ("vals", _P), ("mask", _I64), ("owner", _P), ("bad", _P),
                ("store", _P), ("nslots", _I64), ("next", _I64)]


class WalkStruct(ctypes.Structure):
    """kernel.c's `walk_t`: one list walk's parameters and the state kept between calls."""

    _fields_ = [(n, _I64) for n in ("lo", "n", "nxt", "back", "own", "rlo", "rn")] + [
        ("owner", _U64), ("anchor", _U64), ("ring", _I64), ("forward", _I64), ("limit", _I64),
        ("cur", _U64), ("prev", _U64), ("has_prev", _I64), ("count", _I64), ("cap", _I64),
        ("out", _P), ("rows", _P), ("rok", _P), ("seen", _P), ("smask", _I64),
        ("cause", _I64), ("found", _U64), ("need", _I64)]


class SrcStruct(ctypes.Structure):
    """kernel.c's `src_t`: where the pool's pages can be read from a file without Python
    (mdbpy/heap/gather.py's _Source owns its arrays)."""

    _fields_ = [("fd", _I64), ("start", _P), ("end", _P), ("off", _P), ("n", _I64),
                ("last_a", _U64), ("last_b", _U64), ("block", _U64), ("run_max", _U64),
                ("buf", _P)]


_SIGNATURES = {
    "loc_runs": (_I64, [_P, _P, _I64, _P, _P, _P, _P, _P]),
    "loc_islands": (_I64, [_P, _P, _I64, _U64, _P, _P]),
    "loc_fill": (None, [ctypes.POINTER(LocatorStruct), _P, _P]),
    "scan_words": (_I64, [ctypes.POINTER(LocatorStruct), _P, _I64, _U64, _P, _P, _P, _P,
                          _P]),
    "pick_words": (_I64, [_P, _I64, _U64, _U64, _U64, _P, _P]),
    "expand_runs": (None, [_I64, _P, _P, _P, _P, _P, _P, _P, _I64, _P, _P, _P, _P, _P]),
    "copy_runs": (None, [_I64, _P, _P, _P, _I64, _P, _P]),
    "graph_nodes": (_I64, [_I64, _P, _P, _I64, _P, _P]),
    "bfs": (_I64, [_I64, _P, _P, _P, _P, _I64, _P, _P, _P]),
    "follow_sizes": (_I64, [_P, _I64, _I64, _I64, _I64, _U64, _U64, _P, _P]),
    "pool_add": (None, [ctypes.POINTER(PoolStruct), _I64, _I64, _P, _P]),
    "fill_span": (None, [_U64, _U64, _U64, _U64, _U64, _P]),
    "pool_lookup": (None, [ctypes.POINTER(PoolStruct), _P, _I64, _P]),
    "seen_add": (None, [_P, _I64, _P, _I64]),
    "walk_list": (_I64, [ctypes.POINTER(PoolStruct), ctypes.POINTER(WalkStruct)]),
    # the typegraph's propagation (a tg_t *, whose ctypes mirror is mdbpy/types/graph/
    # compiled.py's: the types layer cannot import this module, docs/architecture.md) and edges
    "tg_seed": (None, [_P]),
    "tg_drain": (_I64, [_P]),
    "tg_scan": (_I64, [_P, _P, _I64, _P, _I64, _U64, _U64, _U64, _P, _P, _P, _P]),
    # the pool filled from a file without Python (gather.py's _Source)
    "walk_list_src": (_I64, [ctypes.POINTER(PoolStruct), ctypes.POINTER(WalkStruct),
                             ctypes.POINTER(SrcStruct)]),
    "pool_rows": (_I64, [ctypes.POINTER(PoolStruct), ctypes.POINTER(SrcStruct), _P, _I64, _I64,
                         _P, _P]),
}
# kernel.c's node_t: a node of the graph the breadth-first search walks
NODE = [("deg", "<i4"), ("ref", "<i4")]
MAX_EDGES = (1 << 31) - 1  # node_t numbers edges with int32
_lib = None


def lib() -> ctypes.CDLL:
    """The loaded kernel (once per process), or an MdbError saying how to build it."""
    global _lib
    if _lib is None:
        here = Path(__file__).parent
        found = [here / f"_kernel{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES
                 if (here / f"_kernel{suffix}").exists()]
        if not found:
            raise MdbError("mdbpy's compiled scan kernel is missing: reinstall with a C compiler "
                           "present (apt install gcc; pip install -e .)")
        dll = ctypes.CDLL(str(found[0]))
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(dll, name)
            fn.restype, fn.argtypes = restype, argtypes
        _lib = dll
    return _lib


def ptr(array) -> int:
    """The address of a numpy array's data (0 for None), for a ctypes call."""
    return 0 if array is None else array.ctypes.data
