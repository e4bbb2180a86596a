"""The roots of a conservative scan (mdb leaky's §5.4, done for real on Linux).

Roots are: the writable data and bss of every loaded object; every thread's registers; every
thread's stack from its stack pointer to the end of the stack mapping; and each thread's
thread-pointer area (static TLS, where glibc keeps e.g. its tcache pointer). Heap memory, the
allocator's own metadata and the candidates themselves are never roots: they are subtracted.
"""

from __future__ import annotations

from mdbpy.heap.scan import Root, RootSet

TLS_BELOW = 64 << 10  # static TLS lies below the thread pointer (x86_64 variant II)
TLS_ABOVE = 4 << 10  # the TCB lies above it


def merge_ranges(ranges) -> list[tuple[int, int]]:
    """Sorted, non-overlapping, non-empty [start, end) ranges covering the same addresses
    (touching ones joined)."""
    import numpy as np

    r = np.array([(a, b) for a, b in ranges if a < b], np.uint64).reshape(-1, 2)
    return merge_columns(r[:, 0], r[:, 1])


def merge_columns(starts, ends) -> list[tuple[int, int]]:
    """merge_ranges() of non-empty ranges given as two uint64 columns: vectorized, since an
    allocator may have a range per extent (jemalloc: 200,000 on a million regions)."""
    import numpy as np

    if not len(starts):
        return []
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], np.maximum.accumulate(ends[order])
    # a range opens a new run where it starts past every end before it
    new = np.concatenate(([True], s[1:] > e[:-1]))
    first = np.flatnonzero(new)
    last = np.concatenate((first[1:], [len(s)])) - 1
    return list(zip(s[first].tolist(), e[last].tolist()))


def subtract(ranges: list[Root], holes) -> list[Root]:
    """The parts of the root ranges outside every hole."""
    import bisect

    holes = merge_ranges(holes)
    starts = [h[0] for h in holes]
    out = []
    for r in ranges:
        cur = r.start
        i = max(bisect.bisect_right(starts, r.start) - 1, 0)
        while i < len(holes) and holes[i][0] < r.end and cur < r.end:
            hs, he = holes[i]
            if he > cur:
                if hs > cur:
                    out.append(Root(cur, hs, r.label))
                cur = max(cur, he)
            i += 1
        if cur < r.end:
            out.append(Root(cur, r.end, r.label))
    return out


def data_ranges(session) -> list[Root]:
    """Writable data and bss of the loaded objects: their writable file mappings, plus the
    part of the anonymous writable mapping that starts exactly where one of their mappings
    ends which the object's PT_LOADs cover (its bss beyond the file). The kernel merges that
    mapping with an anonymous mmap placed right after it, so the whole mapping is bss only
    when the object's headers cannot say where its bss ends."""
    import os

    out = []
    maps = session.mem.mappings()
    objs = {o.path: o for o in session.symbols.objects() if o.path}
    for k, m in enumerate(maps):
        if not (m.readable and m.writable) or m.shared:
            continue
        if m.is_file:
            out.append(Root(m.start, m.end, f"{os.path.basename(m.path)} data"))
        elif not m.path and k > 0 and maps[k - 1].end == m.start and maps[k - 1].is_file:
            o = objs.get(maps[k - 1].path)
            end = min(m.end, o.end) if getattr(o, "info", None) else m.end
            if end > m.start:
                out.append(Root(m.start, end, f"{os.path.basename(maps[k - 1].path)} bss"))
    return out


def thread_roots(session) -> tuple[list[Root], list[tuple[int, str]], list[str]]:
    """(stack and TLS ranges, register values, warnings) for every thread."""
    mem = session.mem
    ranges, values, warnings = [], [], []
    threads = session.target.threads()
    for t in threads:
        regs = t.regs
        if not regs:
            warnings.append(f"thread {t.tid}: registers unknown, its stack is not a root")
            continue
        for name, v in regs.items():
            if name not in ("rsp", "fs_base", "gs_base"):
                values.append((v, f"thread {t.tid} %{name}"))
        sp = regs.get("rsp")
        m = mem.mapping_at(sp) if sp is not None else None
        if m is not None:
            ranges.append(Root(sp & ~7, m.end, f"thread {t.tid} stack"))
        else:
            warnings.append(f"thread {t.tid}: stack pointer 0x{sp or 0:x} is not mapped")
        fs = regs.get("fs_base")
        tm = mem.mapping_at(fs) if fs else None
        if tm is not None:
            lo = max(tm.start, fs - TLS_BELOW)
            if sp is not None and lo <= sp < fs:
                # a thread's TLS sits above its own stack: below the stack pointer is dead
                lo = sp & ~7
            ranges.append(Root(lo, min(tm.end, fs + TLS_ABOVE), f"thread {t.tid} TLS"))
    if not threads:
        # without threads (e.g. registers unavailable) the main stack is still a root
        for m in mem.mappings():
            if m.path == "[stack]":
                ranges.append(Root(m.start, m.end, "[stack]"))
    return ranges, values, warnings


def collect_roots(session, exclude: list[tuple[int, int]]) -> tuple[RootSet, list[str]]:
    """The RootSet of the target, with `exclude` (heap, metadata, candidates) cut out."""
    stack_ranges, values, warnings = thread_roots(session)
    ranges = subtract(data_ranges(session) + stack_ranges, exclude)
    return RootSet(_merge_same(ranges), values), warnings


def _merge_same(ranges: list[Root]) -> list[Root]:
    """Drop overlaps between roots (a TLS area inside a stack range is scanned once)."""
    ranges = sorted(ranges, key=lambda r: (r.start, -r.end))
    out: list[Root] = []
    for r in ranges:
        if out and r.start < out[-1].end:
            if r.end > out[-1].end:
                out.append(Root(out[-1].end, r.end, r.label))
            continue
        out.append(r)
    return out
