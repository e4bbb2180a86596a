"""Heap snapshots: every allocator's buffers at one moment, as columns saved in a numpy .npz.

Memory growth is found by comparing two moments of one program (mdbpy.heap.diff), and the
moments are often far apart: a live process now and an hour later, a core from yesterday. So
a moment is written down once, compactly, and read back without the target: per buffer its
address, size, state, kind, allocator, group (cache or size class, as ::heap_stats names it),
the allocation stack where the allocator records one (an index into a stack table kept once:
pcs, the symbolized frames and the caller, the first frame outside the allocator) and the type
where a typegraph was already built (never built here: it can take minutes). The format is
docs/snapshots.md; it is read with allow_pickle=False, so a snapshot is data, never code, and
a reader refuses a newer major version with one line rather than misreading it.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field

from mdbpy.errors import MdbError
from mdbpy.heap.model import ALLOC, Allocator, allocators
from mdbpy.symbols.cache import write_atomic

FORMAT = (1, 0)  # major.minor: a reader refuses a newer major; minor adds optional columns
MAGIC = "mdbpy heap snapshot"
NO_STACK = "<no stack>"  # the caller of a buffer whose allocator records no stack
UNKNOWN_TYPE = "<unknown>"

# the per-buffer columns: name -> numpy dtype (docs/snapshots.md)
COLUMNS = {"addr": "uint64", "size": "uint64", "state": "uint8", "kind": "uint8",
           "allocator": "uint8", "group": "int32", "stack": "int32", "type": "int32"}
# the tables the columns index, one string per entry (stack_pcs is (stacks, depth) uint64)
TABLES = {"allocator": "allocators", "group": "groups", "stack": "stack_caller",
          "type": "types"}


@dataclass
class Snapshot:
    """One heap, column-wise (each column a numpy array, one row per buffer, ordered by
    allocator then address); `group`, `stack`, `type` index the string tables (-1: none)."""

    meta: dict
    cols: dict
    allocators: list[str]
    groups: list[str]
    types: list[str]
    stack_pcs: object  # (stacks, depth) uint64, innermost first, 0-padded
    stack_frames: list[str]  # per stack: its frames symbolized, one per line
    stack_caller: list[str]  # per stack: the first frame outside the allocator, by name
    path: str = ""
    _labels: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.cols["addr"])

    def __getattr__(self, name):
        cols = self.__dict__.get("cols")
        if cols is not None and name in cols:
            return cols[name]
        raise AttributeError(name)

    def totals(self) -> dict:
        """Buffers, allocated buffers and their bytes, free buffers and their bytes."""
        import numpy as np

        alloc = self.state == ALLOC
        return {"buffers": len(self), "allocated": int(alloc.sum()),
                "allocated_bytes": int(self.size[alloc].sum(dtype=np.uint64)),
                "free": int((~alloc).sum()),
                "free_bytes": int(self.size[~alloc].sum(dtype=np.uint64))}

    def describe(self) -> str:
        """`N buffers (M allocated, B bytes) from ALLOCATORS, S stacks, T types`."""
        t = self.totals()
        return (f"{t['buffers']} buffers ({t['allocated']} allocated, {t['allocated_bytes']} "
                f"bytes) from {', '.join(self.allocators) or 'no allocator'}, "
                f"{len(self.stack_caller)} stacks, {len(self.types)} types")

    def save(self, path: str) -> None:
        """Write the .npz (compressed) through a temporary file, so a reader never sees half
        a snapshot; the name is kept as given (numpy appends .npz to a bare file name, not to
        a stream)."""
        import numpy as np

        arrays = {name: np.ascontiguousarray(col, COLUMNS[name])
                  for name, col in self.cols.items()}
        arrays.update(meta=np.array(json.dumps(self.meta, sort_keys=True)),
                      allocators=_strings(self.allocators), groups=_strings(self.groups),
                      types=_strings(self.types), stack_frames=_strings(self.stack_frames),
                      stack_caller=_strings(self.stack_caller),
                      stack_pcs=np.ascontiguousarray(self.stack_pcs, np.uint64))
        data = io.BytesIO()
        np.savez_compressed(data, **arrays)
        try:
            write_atomic(path, [data.getbuffer()], strict=True)
        except OSError as e:
            raise MdbError(f"cannot write {path}: {e.strerror}") from None
        self.path = path

    def labels(self, table: str):
        """The string table `table` as a numpy array with a last entry for -1 (none): the
        labels of every row are then labels(t)[column], one indexing."""
        import numpy as np

        if table not in self._labels:
            none = {"stack_caller": NO_STACK, "stack_frames": NO_STACK,
                    "types": UNKNOWN_TYPE}.get(table, "?")
            self._labels[table] = np.array(list(getattr(self, table)) + [none], object)
        return self._labels[table]


def _strings(values: list[str]):
    import numpy as np

    return np.array(list(values), dtype=str) if values else np.zeros(0, "<U1")


# -- taking one -------------------------------------------------------------------------------
def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mdbpy")
    except PackageNotFoundError:
        return "unknown"


def _records_kept(a: Allocator) -> bool:
    """Whether the allocator can say anything of a buffer's allocation (it overrides one of
    the record hooks): a million glibc chunks are not asked one by one for nothing."""
    cls = type(a)
    return any(getattr(cls, h) is not getattr(Allocator, h)
               for h in ("record", "records", "record_columns"))


class _Stacks:
    """The stack table being built: distinct stacks (as tuples of pcs) get ids in order."""

    def __init__(self, session):
        self.session = session
        self.ids: dict[tuple, int] = {}
        self.frames: list[str] = []
        self.callers: list[str] = []

    def add(self, alloc: Allocator, stacks):
        """The id of each row of a (n, depth) pc array (-1 for an empty row)."""
        import numpy as np

        from mdbpy.heap.report import caller

        out = np.full(len(stacks), -1, np.int32)
        if not len(stacks) or not stacks.shape[1]:
            return out
        distinct, which = np.unique(stacks, axis=0, return_inverse=True)
        ids = []
        for row in distinct.tolist():
            pcs = tuple(pc for pc in row if pc)
            if not pcs:
                ids.append(-1)
                continue
            if pcs not in self.ids:
                self.ids[pcs] = len(self.ids)
                fmt = self.session.format_addr
                self.frames.append("\n".join(fmt(pc, True) for pc in pcs))
                self.callers.append(fmt(caller(alloc, pcs), True).split("+", 1)[0])
            ids.append(self.ids[pcs])
        return np.array(ids, np.int32)[np.asarray(which).reshape(-1)]

    def pcs(self):
        import numpy as np

        depth = max((len(s) for s in self.ids), default=0)
        out = np.zeros((len(self.ids), depth), np.uint64)
        for k, s in enumerate(self.ids):
            out[k, :len(s)] = s
        return out


def _types(session, addr, state):
    """(type id per row, type names) from the session's typegraph if one is built: a
    buffer's type is the element type ::heap_stats -t counts it under."""
    import numpy as np

    from mdbpy.types.graph import cached

    tid = np.full(len(addr), -1, np.int32)
    g = cached(session)
    if g is None or not len(g.starts) or not len(addr):
        return tid, []
    row = np.searchsorted(g.starts, addr, side="right").astype(np.int64) - 1
    ok = (row >= 0) & (state == ALLOC)
    ok[ok] &= g.starts[row[ok]] == addr[ok]
    found = g.solution.tid[row[ok]].astype(np.int64)
    names: dict[str, int] = {}
    ids = np.array([names.setdefault(g.catalog[t].name, len(names)) if t >= 0 else -1
                    for t in found.tolist()], np.int32)
    tid[ok] = ids
    return tid, list(names)


def take(session) -> Snapshot:
    """The snapshot of the session's heap: every allocator's buffers (allocated and free),
    the allocated ones' stacks and (after ::typegraph) types."""
    import numpy as np

    from mdbpy.heap.picture import group_label

    found = allocators(session)
    stacks = _Stacks(session)
    parts, groups = [], []
    for k, a in enumerate(found):
        t = a.buffers()
        gid = np.arange(len(t.groups), dtype=np.int32) + len(groups)
        groups += [group_label(g) for g in t.groups]
        stack = np.full(len(t), -1, np.int32)
        alloc = np.flatnonzero(t.state == ALLOC)
        if _records_kept(a) and len(alloc):
            stack[alloc] = stacks.add(a, a.record_columns(t, alloc).stacks)
        parts.append({"addr": t.base, "size": t.size, "state": t.state, "kind": t.kind,
                      "allocator": np.full(len(t), k, np.uint8),
                      "group": gid[t.group] if len(gid) else np.zeros(len(t), np.int32),
                      "stack": stack})
    cols = {c: np.concatenate([p[c] for p in parts]).astype(COLUMNS[c], copy=False)
            if parts else np.zeros(0, COLUMNS[c]) for c in COLUMNS if c != "type"}
    cols["type"], types = _types(session, cols["addr"], cols["state"])
    target = session.target
    meta = {"magic": MAGIC, "format": "%d.%d" % FORMAT, "mdbpy": package_version(),
            "target": target.describe(), "time": time.time(),
            "pid": getattr(target, "pid", None), "exe": target.exe_path(),
            "allocators": [{"name": a.name, "version": list(a.version or ())} for a in found],
            "typegraph": bool(types)}
    snap = Snapshot(meta, cols, [a.name for a in found], groups, types, stacks.pcs(),
                    stacks.frames, stacks.callers)
    snap.meta["totals"] = snap.totals()
    return snap


# -- reading one ------------------------------------------------------------------------------
def load(path: str) -> Snapshot:
    """The snapshot in `path`, checked: a file that is not one, is cut short, damaged, or of
    a newer major format version is one MdbError line naming the file."""
    import tokenize
    import zipfile
    import zlib

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not a snapshot")
            # Every member's CRC first: numpy parses an array's header before the zip layer
            # checks anything, so a damaged header would otherwise surface as whatever
            # numpy's header parser happens to raise.
            damaged = z.zip.testzip()
            if damaged is not None:
                raise ValueError(f"member {damaged} fails its CRC check")
            arrays = {k: z[k] for k in z.files}
    except OSError as e:
        raise MdbError(f"cannot read snapshot {path}: {e.strerror or e}") from None
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, SyntaxError,
            tokenize.TokenError, NotImplementedError, RuntimeError) as e:
        # NotImplementedError and RuntimeError: zipfile's word for a damaged compression
        # method or encryption flag.
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise MdbError(f"{path}: not a readable mdbpy heap snapshot ({why})") from None
    return _checked(path, arrays)


def _checked(path: str, arrays: dict) -> Snapshot:
    import numpy as np

    def bad(why: str) -> MdbError:
        return MdbError(f"{path}: not a readable mdbpy heap snapshot ({why})")

    try:
        meta = json.loads(str(arrays["meta"]))
    except (KeyError, ValueError):
        raise bad("no metadata") from None
    if not isinstance(meta, dict) or meta.get("magic") != MAGIC:
        raise bad("no mdbpy snapshot metadata")
    try:
        major, minor = (int(x) for x in str(meta.get("format")).split("."))
    except ValueError:
        raise bad(f"format version {meta.get('format')!r}") from None
    if major > FORMAT[0]:
        raise MdbError(f"{path}: snapshot format {major}.{minor} is newer than this mdbpy "
                       f"({package_version()}) reads ({FORMAT[0]}.x); upgrade mdbpy")
    missing = [k for k in (*COLUMNS, *TABLES.values(), "stack_pcs", "stack_frames")
               if k not in arrays]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    n = len(arrays["addr"])
    cols = {}
    for name, dtype in COLUMNS.items():
        col = arrays[name]
        if col.shape != (n,) or col.dtype != np.dtype(dtype):
            raise bad(f"column {name} is {col.dtype}{list(col.shape)}, not {dtype}[{n}]")
        cols[name] = col
    tables = {k: [str(s) for s in arrays[k].tolist()] for k in (*TABLES.values(),
                                                                 "stack_frames")}
    for col, table in TABLES.items():
        lo = 0 if col == "allocator" else -1
        if n and (int(cols[col].min()) < lo or int(cols[col].max()) >= len(tables[table])):
            raise bad(f"column {col} indexes past {table}")
    pcs = arrays["stack_pcs"]
    if pcs.ndim != 2 or len(pcs) != len(tables["stack_caller"]) or \
            len(tables["stack_frames"]) != len(pcs):
        raise bad("the stack table's parts disagree")
    return Snapshot(meta, cols, tables["allocators"], tables["groups"], tables["types"],
                    pcs, tables["stack_frames"], tables["stack_caller"], path)
