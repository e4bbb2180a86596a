"""What grew between two heap snapshots (mdbpy.heap.snapshot): the buffers allocated in the
second and not the first (new), in the first and not the second (freed), grouped by size, by
cache, by caller, by allocation stack and by type, with counts and bytes, largest net growth
first.

A buffer is the same in both when it is at the same address with the same size, allocator,
cache and caller: a buffer freed and allocated again at its address by another caller between
the two moments is one freed and one new. Stacks are compared by their symbolized frames, never
by pc, so two cores of two builds, or of two runs with different load addresses, still match
their callers. Free buffers are no growth: they only show as the freed allocated ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdbpy.heap.model import ALLOC
from mdbpy.heap.snapshot import Snapshot

# axis -> (the string table naming it, the column indexing that table; None: the size itself)
AXES = {"size": (None, "size"), "cache": ("groups", "group"), "caller": ("stack_caller", "stack"),
        "stack": ("stack_frames", "stack"), "type": ("types", "type")}
TEXT_AXES = ("size", "cache", "caller", "type")  # the text shows these unless asked: a stack
# row is many lines


@dataclass
class Growth:
    """One row of a diff: a size, cache, caller, stack or type, and how it changed."""

    key: str
    new: int = 0
    new_bytes: int = 0
    freed: int = 0
    freed_bytes: int = 0

    @property
    def net(self) -> int:
        return self.new - self.freed

    @property
    def net_bytes(self) -> int:
        return self.new_bytes - self.freed_bytes

    def sort_key(self):
        return (-self.net_bytes, -self.net, self.key)

    def as_dict(self) -> dict:
        return {"key": self.key, "new": self.new, "new_bytes": self.new_bytes,
                "freed": self.freed, "freed_bytes": self.freed_bytes, "net": self.net,
                "net_bytes": self.net_bytes}


@dataclass
class HeapDiff:
    """Two snapshots compared: each one's metadata and totals, the total growth, and the rows
    of every axis in order of net growth (bytes, then buffers)."""

    before: dict
    after: dict
    total: Growth
    axes: dict[str, list[Growth]] = field(default_factory=dict)
    known: dict[str, bool] = field(default_factory=dict)  # does any buffer have a caller, type

    def primary(self) -> str:
        """The axis that says most: callers where stacks are kept, else types where a
        typegraph was built, else sizes (what a plot shows by default)."""
        return next((a for a in ("caller", "type") if self.known.get(a)), "size")

    def as_dict(self, axes=AXES, top: int = 0) -> dict:
        def rows(axis):
            out = [g.as_dict() for g in self.axes[axis][:top or None]]
            if axis == "stack":
                for r in out:
                    r["stack_names"] = r["key"].split("\n") if r["key"] else []
            return out

        return {"before": self.before, "after": self.after, "total": self.total.as_dict(),
                "by": {a: rows(a) for a in axes}}


def _side(s: Snapshot) -> dict:
    """What a diff says of one snapshot: where and when it was taken, and its totals."""
    keep = ("target", "time", "pid", "exe", "mdbpy", "format")
    return {**{k: s.meta.get(k) for k in keep}, "path": s.path or None, **s.totals()}


def _labels(s: Snapshot, axis: str, rows):
    """The label of each of `rows` of s on `axis` (strings, an object array)."""
    table, col = AXES[axis]
    values = s.cols[col][rows]
    if table is None:
        return values.astype(str).astype(object)
    return s.labels(table)[values]


def _same(a: Snapshot, b: Snapshot, ra, rb):
    """Of the allocated rows ra of a and rb of b: (mask over ra, mask over rb) of the buffers
    present in both (see the module's docstring for what the same buffer is)."""
    import numpy as np

    _, ia, ib = np.intersect1d(a.addr[ra], b.addr[rb], assume_unique=True,
                               return_indices=True)
    keep = a.size[ra[ia]] == b.size[rb[ib]]
    for axis_or_col in ("allocators", "cache", "caller"):
        if axis_or_col == "allocators":
            la = a.labels("allocators")[a.allocator[ra[ia]]]
            lb = b.labels("allocators")[b.allocator[rb[ib]]]
        else:
            la, lb = _labels(a, axis_or_col, ra[ia]), _labels(b, axis_or_col, rb[ib])
        keep &= la == lb
    in_a, in_b = np.zeros(len(ra), bool), np.zeros(len(rb), bool)
    in_a[ia[keep]] = True
    in_b[ib[keep]] = True
    return in_a, in_b


def _group(keys_new, bytes_new, keys_freed, bytes_freed) -> list[Growth]:
    """The rows of one axis: new and freed buffers counted and summed per label (the sums
    in float64 are exact below 2**53 bytes)."""
    import numpy as np

    keys = np.concatenate([keys_new, keys_freed]).astype(object)
    if not len(keys):
        return []
    names, which = np.unique(keys.astype(str), return_inverse=True)
    which = which.reshape(-1)
    n = len(keys_new)
    k = len(names)
    counts = [np.bincount(which[:n], minlength=k), np.bincount(which[n:], minlength=k)]
    sums = [np.bincount(which[:n], weights=bytes_new.astype(np.float64), minlength=k),
            np.bincount(which[n:], weights=bytes_freed.astype(np.float64), minlength=k)]
    rows = [Growth(str(names[j]), int(counts[0][j]), int(sums[0][j]), int(counts[1][j]),
                   int(sums[1][j])) for j in range(k)]
    return sorted(rows, key=Growth.sort_key)


def compare(a: Snapshot, b: Snapshot) -> HeapDiff:
    """b's heap against a's: new buffers (allocated in b only), freed (in a only)."""
    import numpy as np

    ra, rb = np.flatnonzero(a.state == ALLOC), np.flatnonzero(b.state == ALLOC)
    in_a, in_b = _same(a, b, ra, rb)
    freed, new = ra[~in_a], rb[~in_b]
    fb, nb = a.size[freed], b.size[new]
    total = Growth("total", len(new), int(nb.sum(dtype=np.uint64)), len(freed),
                   int(fb.sum(dtype=np.uint64)))
    d = HeapDiff(_side(a), _side(b), total)
    for axis in AXES:
        d.axes[axis] = _group(_labels(b, axis, new), nb, _labels(a, axis, freed), fb)
    d.known = {"caller": bool(len(a.stack_caller) or len(b.stack_caller)),
               "type": bool(len(a.types) or len(b.types))}
    return d


# -- text -------------------------------------------------------------------------------------
def _signed(v: int) -> str:
    return f"{v:+d}" if v else "0"


def text_lines(d: HeapDiff, axes=TEXT_AXES, top: int = 10) -> list[str]:
    """mdb-style tables, one per axis (caller and type only where something is known), each
    sorted by net growth and cut to `top` rows (0: all)."""
    before, after = d.before, d.after
    lines = [f"heapdiff: {before.get('path') or before.get('target')} -> "
             f"{after.get('path') or after.get('target')}",
             f"allocated: {before['allocated']} -> {after['allocated']} buffers "
             f"({_signed(after['allocated'] - before['allocated'])}), "
             f"{before['allocated_bytes']} -> {after['allocated_bytes']} bytes "
             f"({_signed(after['allocated_bytes'] - before['allocated_bytes'])}); "
             f"{d.total.new} new ({d.total.new_bytes} bytes), {d.total.freed} freed "
             f"({d.total.freed_bytes} bytes)"]
    for axis in axes:
        if axis in ("caller", "stack", "type") and not d.known.get(
                "caller" if axis == "stack" else axis):
            continue
        rows = d.axes[axis][:top or None]
        lines.append("")
        lines += growth_table(axis, rows, len(d.axes[axis]))
    return lines


def growth_table(axis: str, rows: list[Growth], of: int) -> list[str]:
    """One axis as a table: BY <AXIS>, then NET BYTES, NET, NEW, NEW BYTES, FREED, FREED
    BYTES; a stack row's frames follow it, indented."""
    width = max([len(axis) + 3] + [len(g.key.split("\n")[0]) for g in rows] + [20])
    head = (f"{'BY ' + axis.upper():<{width}s} {'NET BYTES':>12s} {'NET':>8s} {'NEW':>8s} "
            f"{'NEW BYTES':>12s} {'FREED':>8s} {'FREED BYTES':>12s}")
    out = [head, "-" * len(head)]
    for g in rows:
        first, *rest = g.key.split("\n")
        out.append(f"{first:<{width}s} {_signed(g.net_bytes):>12s} {_signed(g.net):>8s} "
                   f"{g.new:>8d} {g.new_bytes:>12d} {g.freed:>8d} {g.freed_bytes:>12d}")
        out += [f"    {frame}" for frame in rest]
    if not rows:
        out.append("(no change)")
    if of > len(rows):
        out.append(f"... {of - len(rows)} more")
    return out


# -- a series ---------------------------------------------------------------------------------
def allocated_by(s: Snapshot, axis: str) -> dict[str, int]:
    """{label: allocated bytes} of one snapshot on one axis."""
    import numpy as np

    rows = np.flatnonzero(s.state == ALLOC)
    return {g.key: g.new_bytes for g in _group(_labels(s, axis, rows), s.size[rows],
                                               np.zeros(0, object), np.zeros(0, np.uint64))}


def trend_lines(snaps: list[Snapshot], top: int = 5) -> list[str]:
    """A series of snapshots of one process: a line per snapshot (its time, allocated buffers
    and bytes, and the change since the first), then the top growers from the first to the
    last on the axis that says most, with their allocated bytes at every snapshot."""
    import time as _time

    first = snaps[0].totals()
    lines = [f"{'#':>3s} {'TIME':<8s} {'ALLOCATED':>10s} {'BYTES':>12s} {'SINCE FIRST':>12s}"]
    for k, s in enumerate(snaps):
        t = s.totals()
        when = _time.strftime("%H:%M:%S", _time.localtime(s.meta.get("time") or 0))
        lines.append(f"{k:>3d} {when:<8s} {t['allocated']:>10d} {t['allocated_bytes']:>12d} "
                     f"{_signed(t['allocated_bytes'] - first['allocated_bytes']):>12s}")
    if len(snaps) < 2:
        return lines
    d = compare(snaps[0], snaps[-1])
    axis = d.primary()
    growers = [g for g in d.axes[axis] if g.net_bytes > 0][:top or None]
    series = [allocated_by(s, axis) for s in snaps]
    lines += ["", f"top growers by {axis}, allocated bytes at each snapshot:"]
    for g in growers:
        lines.append(f"{g.key.splitlines()[0]:<24s} {_signed(g.net_bytes):>12s}  " +
                     " ".join(str(b.get(g.key, 0)) for b in series))
    return lines
