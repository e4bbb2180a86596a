"""Finding glibc malloc's state in a target: arenas, their heaps, mp_ and each thread's tcache.

The finders (finders.py: libc's symbols and DWARF, or self-verifying heuristics) find the main
arena, mp_, the tcaches and the hardening values; the setting `ptmalloc.locate` (auto | symbols
| heuristic; ::ptmalloc -m) chooses which are asked, and `found` records what each part came
from, for ::ptmalloc to show. From the main arena the arenas and their heaps are walked
(arenas.py), and what was met as damage is recorded in State.damage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mdbpy.errors import MdbError, ReadError
from mdbpy.heap.damage import Damage, warn
from mdbpy.layout.bind import Binder

from .arenas import MALLOC_ALIGNMENT, Arena, find_arenas
from .finders import bind_structs, finders_for, request2size
from .layouts import V_SAFE_LINKING
from .version import find_libc, glibc_version

MODES = ("auto", "symbols", "heuristic")
WARNED = "ptmalloc.warned"  # cache key: the damage warnings printed in this stop
SETTING = "ptmalloc.locate"
ENV_SETTING = "MDBPY_PTMALLOC_LOCATE"


def locate_mode(session) -> str:
    """The setting in force: the session's, else $MDBPY_PTMALLOC_LOCATE, else auto."""
    mode = session.settings.get(SETTING) or os.environ.get(ENV_SETTING) or "auto"
    if mode not in MODES:
        raise MdbError(f"ptmalloc: locate mode '{mode}' is not one of {', '.join(MODES)}")
    return mode


class NotInUse(MdbError):
    """glibc's malloc never ran in this process: another allocator (libumem through
    LD_PRELOAD, jemalloc, a static one) replaced it. Not an error of the heap, so automatic
    detection passes over it in silence; ::ptmalloc says it."""


@dataclass
class Tcache:
    addr: int
    tid: int | None  # the owning thread, when known
    how: str  # 'symbols', 'TLS slot', 'TLS scan', 'first chunk'


@dataclass
class State:
    """Everything located, for one session and one stop of the target."""

    version: tuple
    structs: Binder
    libc: object
    main_arena: int
    mp: object  # View of malloc_par, or None
    arenas: list[Arena]
    tcaches: list[Tcache]
    safe_linking: bool
    tcache_key: int | None  # 2.34+: libc's random key (None when unknown)
    perturb: int | None  # glibc.malloc.perturb, when known
    found: dict[str, str]  # part -> 'symbols' | 'heuristic' | ...
    mode: str
    warnings: list[str] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)  # met finding arenas and heaps

    @property
    def tcache_chunk_size(self) -> int:
        return request2size(self.structs["tcache_perthread_struct"].size)

    def heap_ranges(self) -> list[tuple[int, int]]:
        return [h.region for a in self.arenas for h in a.heaps]


# -- safe-linking --------------------------------------------------------------------------
def decide_safe_linking(session, structs, tcaches, heaps, version) -> bool:
    """Whether tcache links are protected, from the first entry of every non-empty bin: a
    stored link is plain when it is 0 or a heap address, protected when it decodes to one."""
    def in_heap(p):
        return any(a <= p < b for a, b in heaps)

    plain = prot = 0
    tp = structs["tcache_perthread_struct"]
    for t in tcaches:
        try:
            v = tp.view(session.mem, t.addr)
        except ReadError:
            continue
        for e in v.entries:
            if not e:
                continue
            try:
                s = session.mem.read_ptr(e)
            except ReadError:
                continue
            d = s ^ (e >> 12)
            plain += s == 0 or (in_heap(s) and not s & 15)
            prot += d == 0 or (in_heap(d) and not d & 15)
    if plain != prot:
        return prot > plain
    return version >= V_SAFE_LINKING


def locate(session) -> State:
    """The located malloc state (cached per stop of the target)."""
    st = session.cache.get("ptmalloc.state")
    if st is None:
        st = _locate(session)
        session.cache["ptmalloc.state"] = st
        warn(session, "ptmalloc", st.damage)
        shown = session.cache.setdefault(WARNED, set())
        for w in st.warnings:  # what was not found, and so is not checked: once per stop
            if w not in shown:
                shown.add(w)
                session.warn(f"ptmalloc: {w}")
    return st


def _first(finders, ask):
    """(answer, the finder that gave it) of the first finder with an answer."""
    for f in finders:
        got = ask(f)
        if got is not None:
            return got, f
    return None, None


def _locate(session) -> State:
    mode = locate_mode(session)
    version = glibc_version(session)
    libc = find_libc(session)
    finders = finders_for(mode, session, libc, version)
    structs, by = _first(finders, lambda f: f.structs())
    if structs is None:
        structs = bind_structs(version)
    found: dict[str, str] = {"structs": "DWARF" if by is not None else "builtin"}
    main, by = _first(finders, lambda f: f.main_arena(structs))
    if main is None:
        if mode == "symbols":
            raise MdbError("ptmalloc: main_arena has no symbol (no libc debug file?); "
                           "try ::ptmalloc -m heuristic")
        raise MdbError("ptmalloc: no arena found in libc's data")
    found["main_arena"] = by.name
    main_state = structs["malloc_state"].view(session.mem, main)
    try:
        never_ran = main_state.top == 0  # malloc_init_state points top at the unsorted bin
    except ReadError:
        never_ran = False
    if never_ran:
        raise NotInUse(f"ptmalloc: glibc's malloc is not in use in this process (main_arena "
                       f"0x{main:x} was never initialized: another allocator replaces it)")
    mp_addr, mp_why = None, ""
    for f in finders:
        mp_addr, mp_why = f.mp(structs, main_state)
        if mp_addr:
            found["mp_"] = f.name
            break
    mp = structs["malloc_par"].view(session.mem, mp_addr) if mp_addr else None
    arenas, damage = find_arenas(session, structs, main, mp)
    limit = mp.tcache_count if mp is not None else 0xFFFF
    tcaches = _tcaches(session, finders, structs, limit, arenas, found)
    heaps = [h.region for a in arenas for h in a.heaps]
    safe = decide_safe_linking(session, structs, tcaches, heaps, version)
    key, _by = _first(finders, lambda f: f.tcache_key())
    perturb, _by = _first(finders, lambda f: f.perturb())
    if perturb is None:  # else what the start-up read from the environment, when readable
        from .tunables import perturb_of

        perturb = perturb_of(session.target)
    warnings = []
    if mp is None:
        warnings.append(f"mp_ not found ({mp_why}): the main heap starts at its top's "
                        "mapping, and the mmapped chunks and tcache counts are not checked "
                        "against glibc's counters")
    if not tcaches and session.target.threads():
        warnings.append("no thread's tcache found: tcache chunks count as in use")
    main_heap = arenas[0].heaps[0] if arenas and arenas[0].heaps else None
    if (mp is not None and mp.sbrk_base and main_heap is not None
            and main_heap.first != (mp.sbrk_base + MALLOC_ALIGNMENT - 1) & -MALLOC_ALIGNMENT):
        warnings.append(f"mp_.sbrk_base 0x{mp.sbrk_base:x} is not in the mappings of the "
                        f"main arena's top (glibc's brk heap is not contiguous): only the "
                        f"main heap from 0x{main_heap.first:x} is walked")
    return State(version, structs, libc, main, mp, arenas, tcaches, safe, key, perturb, found,
                 mode, warnings, damage)


def _tcaches(session, finders, structs, limit, arenas, found) -> list[Tcache]:
    """Each thread's tcache (from its thread pointer, the first finder that finds one), else
    the ones a finder finds without thread pointers; each once."""
    out: list[Tcache] = []
    for t in session.target.threads():
        fs = t.regs.get("fs_base")
        if not fs:
            continue
        for f in finders:
            ptr, how = f.tcache(structs, fs, limit)
            if ptr:
                out.append(Tcache(ptr, t.tid, how))
                break
    if not out:
        for f in finders:
            out += [Tcache(a, None, "first chunk") for a in
                    f.first_chunk_tcaches(structs, arenas, limit)]
    if out:
        found["tcache"] = ", ".join(sorted({t.how for t in out}))
    seen, uniq = set(), []
    for t in out:
        if t.addr not in seen:
            seen.add(t.addr)
            uniq.append(t)
    return uniq
