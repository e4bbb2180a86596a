"""The typegraph's fixpoint through the compiled kernel (mdbpy/heap/kernel.c's tg_seed and
tg_drain): solve.py's rules, in solve.py's order, with the worklist in C.

Why: solve.py's reference takes one Python step per typed buffer and per edge out of it, about
a microsecond each, which made ::typegraph twenty times slower than ::findleaks on the same
heap. Here the worklist (the authoritative buffers queued, the roots offered, every typed
buffer expanded through its type's plan) runs in C over the heap's edge columns; the kernel
stops before a buffer whose type's plan it has not been given, and this module computes that
plan (Catalog.plan_of, when the reference would) and hands it over as a range of two columns;
likewise before interior evidence into a buffer still unknown whose container (containers.py:
the one struct of a size the buffer could have served with that type there) it has not been
told, which Answers computes and hands over as sorted keys.
The interior evidence, checked once a run's worklist is empty, is checked here with numpy: one
Catalog.has_at per distinct (type, offset, type) rather than per pointer. A buffer's outcome
does not depend on the order its interior evidence is checked in (a conflict only touches the
buffer itself), so this answers exactly as the reference's loop; tests/test_typegraph.py runs
both on the fixtures and on random graphs of hand-made types and compares them.

The kernel is handed in by the caller (the dcmds pass mdbpy.heap.kernel.lib()): this layer
sits left of the heap in docs/architecture.md and does not import it. TgStruct mirrors
kernel.c's tg_t field by field.
"""

from __future__ import annotations

import ctypes

from mdbpy.types.graph.solve import MAX_RUNS, UNKNOWN, Solution

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
DONE, NEED_PLAN, FULL, NEED_CONTAINER = range(4)  # tg_drain's answers
ROOM = 16  # the worklist's and the interior list's first room beyond the seed's (then doubled)


class TgStruct(ctypes.Structure):
    """kernel.c's tg_t: the heap's edge columns, the type tables, a run's state."""

    _fields_ = [("n", _I64)] + [(f, _P) for f in (
        "size", "start", "soff", "dst", "doff", "tsize", "tpoly", "at0_start", "at0",
        "plan_lo", "plan_hi", "flex_off", "flex_es", "flex_lo", "flex_hi", "poff", "ptid",
        "fixed", "fix_row", "fix_tid", "fix_how")] + [("nfix", _I64)] + [
        (f, _P) for f in ("root_dst", "root_doff", "root_tid")] + [("nroots", _I64)] + [
        (f, _P) for f in ("tid", "how", "gave", "poisoned", "newp", "queue")] + [
        (f, _I64) for f in ("qhead", "qtail", "qcap")] + [
        (f, _P) for f in ("ib", "ioff", "it")] + [
        (f, _I64) for f in ("icount", "icap", "steps", "need")] + [
        (f, _P) for f in ("req_lo", "req_hi", "ckey_range", "ckey_word", "cval")] + [
        (f, _I64) for f in ("nckey", "need_word", "rnext")]


class _Column:
    """A numpy column appended to at its end, its capacity doubled as it fills (the kernel
    is given its address again before each call)."""

    def __init__(self, dtype):
        import numpy as np

        self.a = np.zeros(64, dtype)
        self.n = 0

    def extend(self, values) -> None:
        import numpy as np

        k = len(values)
        if self.n + k > len(self.a):
            grown = np.zeros(max(2 * len(self.a), self.n + k), self.a.dtype)
            grown[:self.n] = self.a[:self.n]
            self.a = grown
        self.a[self.n:self.n + k] = values
        self.n += k

    @property
    def data(self) -> int:
        return self.a.ctypes.data

    def view(self):
        return self.a[:self.n]


_TYPE_COLUMNS = {"tsize": "int64", "tpoly": "uint8", "at0_start": "int64", "at0": "int32",
                 "plan_lo": "int64", "plan_hi": "int64", "flex_off": "int64",
                 "flex_es": "int64", "flex_lo": "int64", "flex_hi": "int64", "poff": "int64",
                 "ptid": "int32"}


class KernelTypes:
    """The catalog's types as the kernel's tables by tid: size, polymorphism and what lies at
    offset 0 for every type as soon as the catalog has it (sync); a plan once a buffer of the
    type is expanded (load)."""

    def __init__(self, catalog):
        self.catalog = catalog
        self.cols = {name: _Column(dtype) for name, dtype in _TYPE_COLUMNS.items()}
        self.cols["at0_start"].extend([0])

    @classmethod
    def of(cls, catalog) -> KernelTypes:
        """The catalog's tables, kept with it (a graph propagated again, after ::istype or
        -f, finds its types and plans already there)."""
        return catalog.memo(("kernel types",), catalog, lambda: cls(catalog))

    def sync(self) -> None:
        import numpy as np

        c = self.cols
        new = self.catalog.infos[c["tsize"].n:]
        if not new:
            return
        at0 = [sorted(info.at0) for info in new]
        c["tsize"].extend([info.size for info in new])
        c["tpoly"].extend([info.poly for info in new])
        c["at0_start"].extend(c["at0"].n + np.cumsum([len(a) for a in at0]))
        c["at0"].extend([t for a in at0 for t in a])
        for name in ("plan_lo", "plan_hi", "flex_off", "flex_es", "flex_lo", "flex_hi"):
            c[name].extend([-1] * len(new))

    def _plan(self, plan: dict[int, int]) -> tuple[int, int]:
        """Append a plan's words; their range in poff/ptid."""
        lo = self.cols["poff"].n
        words = sorted(plan.items())
        self.cols["poff"].extend([o for o, _ in words])
        self.cols["ptid"].extend([t for _, t in words])
        return lo, self.cols["poff"].n

    def load(self, tid: int) -> None:
        info = self.catalog.plan_of(tid)  # may catalogue the types its pointers reach
        self.sync()
        c = self.cols
        c["plan_lo"].a[tid], c["plan_hi"].a[tid] = self._plan(info.plan)
        if info.flex is not None:
            off, es, sub = info.flex
            c["flex_off"].a[tid], c["flex_es"].a[tid] = off, es
            c["flex_lo"].a[tid], c["flex_hi"].a[tid] = self._plan(sub)

    def point(self, st: TgStruct) -> None:
        for name, col in self.cols.items():
            setattr(st, name, col.data)


class Answers:
    """The containers named so far (containers.Containers.type_at) as the kernel's keys,
    sorted by range then word, answered as tg_drain asks (NEED_CONTAINER): only for evidence
    into a buffer still unknown, as solve.py asks, so that a heap whose buffers are all typed
    otherwise never lists the DWARF's structs by size."""

    def __init__(self, containers):
        import numpy as np

        self.containers = containers
        self.range = np.zeros(0, np.int64)
        self.word = np.zeros(0, np.int64)
        self.val = np.zeros(0, np.int32)

    def add(self, key: tuple[int, int]) -> None:
        """Answer the key (range, word) tg_drain asked for, inserted where it sorts (the keys
        are as many as the distinct (size class, offset, pointee) met: a few)."""
        import numpy as np

        at = int(np.count_nonzero((self.range < key[0]) |
                                  ((self.range == key[0]) & (self.word < key[1]))))
        self.range = np.insert(self.range, at, key[0])
        self.word = np.insert(self.word, at, key[1])
        self.val = np.insert(self.val, at, self.containers.type_at(key))

    def point(self, st: TgStruct) -> None:
        c = self.containers
        st.req_lo, st.req_hi = (None, None) if c is None else (c.lo.ctypes.data,
                                                               c.hi.ctypes.data)
        st.ckey_range, st.ckey_word, st.cval = (a.ctypes.data for a in (self.range, self.word,
                                                                        self.val))
        st.nckey = len(self.range)


def solve_compiled(kernel, catalog, sizes, edges, roots,
                   fixed: dict[int, tuple[int, int]], containers=None) -> Solution:
    """solve.solve's answer, computed by the kernel (a ctypes library with tg_seed and
    tg_drain)."""
    import numpy as np

    def col(a, dtype):
        return np.ascontiguousarray(a, dtype)

    n = len(sizes)
    heap = {"size": col(sizes, np.uint64), "start": col(edges.start, np.int64),
            "soff": col(edges.soff, np.int64), "dst": col(edges.dst, np.int64),
            "doff": col(edges.doff, np.int64),
            "fix_row": np.fromiter(fixed.keys(), np.int64, len(fixed)),
            "fix_tid": np.array([t for t, _ in fixed.values()], np.int32),
            "fix_how": np.array([h for _, h in fixed.values()], np.uint8),
            "root_dst": col(roots.dst, np.int64), "root_doff": col(roots.doff, np.int64),
            "root_tid": col(roots.tid, np.int32)}
    fixed_mask = np.zeros(n, np.uint8)
    fixed_mask[heap["fix_row"]] = 1
    state = {"tid": np.full(n, -1, np.int32), "how": np.zeros(n, np.uint8),
             "gave": np.zeros(n, np.uint8), "poisoned": np.zeros(n, np.uint8),
             "newp": np.zeros(n, np.uint8), "fixed": fixed_mask,
             # room for what tg_seed adds, and the worklist for every buffer typed once;
             # tg_drain asks for more (_grow)
             "queue": np.zeros(n + len(fixed) + len(roots.dst) + ROOM, np.int64),
             "ib": np.zeros(len(roots.dst) + ROOM, np.int64),
             "ioff": np.zeros(len(roots.dst) + ROOM, np.int64),
             "it": np.zeros(len(roots.dst) + ROOM, np.int32)}
    st = TgStruct(n=n, nfix=len(fixed), nroots=len(roots.dst))
    for name, a in heap.items():
        setattr(st, name, a.ctypes.data)
    types = KernelTypes.of(catalog)
    answers = Answers(containers)

    def point() -> int:
        types.sync()
        types.point(st)
        answers.point(st)
        for name, a in state.items():
            setattr(st, name, a.ctypes.data)
        st.qcap, st.icap = len(state["queue"]), len(state["it"])
        return ctypes.addressof(st)

    tid, how, gave, poisoned, newp = (state[k] for k in ("tid", "how", "gave", "poisoned",
                                                          "newp"))
    new = np.zeros(0, np.int64)
    for run in range(1, MAX_RUNS + 1):
        tid.fill(-1)
        how.fill(UNKNOWN)
        gave.fill(0)
        newp.fill(0)
        st.qhead = st.qtail = st.icount = st.rnext = 0
        kernel.tg_seed(point())
        while (status := kernel.tg_drain(point())) != DONE:
            if status == NEED_PLAN:
                types.load(st.need)
            elif status == NEED_CONTAINER:
                answers.add((st.need, st.need_word))
            else:
                _grow(state, st)
        k = st.icount
        bad = interior_conflicts(catalog, types, heap["size"], tid, fixed_mask,
                                 state["ib"][:k], state["ioff"][:k], state["it"][:k])
        late = bad[gave[bad] != 0]
        newp[late] = 1  # types were derived from them: a new run without them
        early = bad[gave[bad] == 0]  # nothing came of their types: excluded in place
        poisoned[early] = 1
        tid[early], how[early] = -1, UNKNOWN
        newp[heap["fix_row"]] = 0
        new = np.flatnonzero(newp)
        if not len(new):
            break
        poisoned[new] = 1
    tid[new], how[new] = -1, UNKNOWN  # the last run's conflicts (after MAX_RUNS runs)
    out = Solution(tid, how, poisoned.astype(bool), run, st.steps)
    if len(new):
        out.notes.append(f"conflicts still appearing after {MAX_RUNS} runs: "
                         f"{len(new)} buffer(s) typed from them may be wrong")
    return out


def _grow(state: dict, st: TgStruct) -> None:
    """Room for st.need more entries in the worklist and in the interior list: the worklist's
    done part dropped and its room doubled (a walk down a long list then stops here a
    logarithmic number of times, not once per few buffers), the interior list's doubled when
    it lacks the room."""
    import numpy as np

    q = state["queue"]
    live = st.qtail - st.qhead
    state["queue"] = np.zeros(2 * len(q) + st.need, np.int64)
    state["queue"][:live] = q[st.qhead:st.qtail]
    st.qhead, st.qtail = 0, live
    if len(state["it"]) - st.icount < st.need:
        cap = 2 * len(state["it"]) + st.need
        for name in ("ib", "ioff", "it"):
            a = np.zeros(cap, state[name].dtype)
            a[:st.icount] = state[name][:st.icount]
            state[name] = a


def interior_conflicts(catalog, types: KernelTypes, size, tid, fixed_mask, ib, ioff, it):
    """The buffers whose interior evidence (buffer ib, offset ioff, type it) is inconsistent
    with the type the run gave them: no member or element of that type at that offset (solve.
    py's last loop of a run), ascending. Buffers left unknown, and authoritative ones, are not
    checked."""
    import numpy as np

    cur = tid[ib].astype(np.int64)
    ok = (cur >= 0) & (fixed_mask[ib] == 0)
    b, off, want, cur = ib[ok], ioff[ok], it[ok].astype(np.int64), cur[ok]
    csize = types.cols["tsize"].view()[cur]
    flex = types.cols["flex_off"].view()[cur] >= 0
    # a flexible array's buffer: offsets past the fixed part extend the array, unchecked;
    # otherwise an offset past the last whole element is a conflict outright
    outright = ~flex & (off >= size[b].astype(np.int64) // csize * csize)
    check = np.where(flex, off < csize, ~outright)
    keys = np.stack([cur, np.where(flex, off, off % csize), want], axis=1)[check]
    fails = outright
    if len(keys):
        uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
        bad = np.array([not catalog.has_at(c, o, w) for c, o, w in uniq.tolist()], bool)
        fails[np.flatnonzero(check)] = bad[inverse.reshape(-1)]
    return np.unique(b[fails])
