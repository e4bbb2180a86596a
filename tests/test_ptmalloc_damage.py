"""Damaged glibc heaps, live and as gcore cores: the ptmalloc_damage fixture builds one heap and
then damages it itself (a smashed chunk size, cyclic fastbin, tcache and unsorted lists, a wild
small-bin fd, a smashed top size, a top pointer moved back, a cut arena ring). For each, the
exact warnings (one line per damage, where it is), the exact ::ptmalloc_verify and ::heap_verify
problems, the regions findleaks does not trust, and findleaks finishing with exactly the leaks
of the undamaged part. Every address is one the fixture printed of itself."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from support import compile_fixture, gcore, start_fixture
from test_ptmalloc_heap import opened, run

from mdbpy.heap.leaks import find_leaks

FLAGS = ("-g", "-O0", "-Wno-use-after-free")
DAMAGE = ("size", "fastcycle", "tcachecycle", "bincycle", "wildfd", "top", "topptr",
          "arenanext")
# live and core through libc's debug symbols, and the core by the heuristics alone
WAYS = (("live", "auto"), ("core", "auto"), ("core", "heuristic"))
LISTINGS = ("::ptmalloc", "::arenas", "::heaps", "::malloc_chunks", "::tcachebins",
            "::fastbins", "::unsortedbin", "::smallbins", "::largebins", "::mp_",
            "::malloc_stats", "::mallinfo", "::heap_stats", "::walk ptmalloc_free")


@pytest.fixture(scope="module")
def damage_exe(build_dir):
    return compile_fixture("ptmalloc_damage", build_dir, flags=FLAGS)


@pytest.fixture(scope="module", params=DAMAGE)
def damaged(request, damage_exe, build_dir):
    """(damage, Running, stats placeholder, core, exe) of one damaged fixture, killed after."""
    r = start_fixture(damage_exe, request.param)
    try:
        yield request.param, (r, "", gcore(r.pid, build_dir / f"damage-{request.param}"),
                              damage_exe)
    finally:
        r.stop()


@dataclass
class Hurt:
    """One damage as mdbpy must report it: the address verify gives, the owner (arena or
    tcache) and the text, and the region findleaks must not trust ((0, 0): none)."""

    addr: int
    owner: str
    text: str
    region: tuple[int, int] = (0, 0)

    @property
    def warning(self) -> str:
        return f"mdbpy: ptmalloc: {self.owner} {self.text}"

    @property
    def verify(self) -> str:
        return self.text if self.text.startswith("chunk ") else f"{self.owner} {self.text}"


def expected(damage: str, r) -> list[Hurt]:
    """What the fixture's own facts say mdbpy must find, in the order it is met."""
    a = r.addr
    main = f"arena 0x{a('main_arena'):x}"
    if damage == "size":
        return [Hurt(a("smashed"), main, f"chunk 0x{a('smashed'):x}: size 0x10000000 runs past "
                     f"the top chunk at 0x{a('top'):x}; walk resumes at 0x{a('resume'):x}",
                     (a("smashed"), a("resume")))]
    if damage == "fastcycle":
        return [Hurt(a("first"), main, f"fastbin[2]: cycle at 0x{a('first'):x} (double free?)",
                     (a("last"), a("last") + 0x40))]
    if damage == "tcachecycle":
        tcache = f"tcache 0x{a('heap_start') + 0x10:x}"
        return [Hurt(a("first"), tcache, f"tcache[1]: cycle at 0x{a('first'):x} (double free?)",
                     (a("last"), a("last") + 0x30))]
    if damage == "bincycle":
        return [Hurt(a("first"), main, f"unsorted: cycle at 0x{a('first'):x}",
                     (a("last"), a("last") + a("last_size")))]
    if damage == "wildfd":
        return [Hurt(a("middle"), main, f"smallbin[16]: fd 0x{a('wild'):x} of chunk "
                     f"0x{a('middle'):x} points to unmapped memory",
                     (a("middle"), a("middle") + 0x100))]
    if damage == "top":
        return [Hurt(a("top"), main, f"top chunk 0x{a('top'):x}: bad size 0xffffffffffffffff",
                     (a("top"), a("heap_end")))]
    if damage == "topptr":
        end = a("false_top") + 0x20
        return [Hurt(a("false_top"), main, f"top chunk 0x{a('false_top'):x}: ends at 0x{end:x}, "
                     f"short of the heap end 0x{a('heap_end'):x}; the rest is not walked",
                     (end, a("heap_end")))]
    next_slot = a("arena2") + a("next_offset")
    return [Hurt(next_slot, f"arena 0x{a('arena2'):x}", f"next 0x{a('wild'):x} points to "
                 "unmapped memory; the arena ring is cut there", (next_slot, next_slot + 8)),
            Hurt(a("arena1"), f"arena 0x{a('arena1'):x}", "is not on the arena ring (found by "
                 f"its heap 0x{a('arena1_heap'):x})")]


def planted_leaks(damage: str, r) -> set[int]:
    base = {r.addr(k) for k in ("leak_string", "leak_list", "leak_list_next", "thread_leak1",
                                "thread_leak2")}
    return base | ({r.addr("leak_after")} if damage == "size" else set())


def check_reports(s, hurt: list[Hurt]) -> None:
    """The exact verify lines, warnings and ::heap_verify report of one damaged heap; every
    listing still answers, and stderr says each damage once."""
    verify = run(s, "::ptmalloc_verify").splitlines()
    ordered = sorted(hurt, key=lambda h: h.addr)
    assert verify == [h.verify if h.verify.startswith("chunk ") else f"0x{h.addr:x}: {h.verify}"
                      for h in ordered]
    assert s.err.getvalue().splitlines() == [h.warning for h in hurt]
    want = []
    for h in ordered:
        want += [f"BUG ptmalloc: {h.verify}", f"INFO: Object 0x{h.addr:x}", ""]
    n = len(hurt)
    plural = "" if n == 1 else "s"
    assert run(s, "::heap_verify -q").splitlines() == want + [
        f"ptmalloc: {n} problem{plural} in {n} buffer{plural}"]
    for cmd in LISTINGS:
        assert run(s, cmd), cmd
    assert s.err.getvalue().splitlines() == [h.warning for h in hurt]


def check_leaks(s, damage: str, r) -> None:
    """findleaks finishes with exactly the planted leaks of the undamaged part, and names
    the regions it could not trust."""
    (alloc,) = s.allocators()
    report = find_leaks(s, [alloc])
    assert {leak.addr for leak in report.leaks} == planted_leaks(damage, r)
    untrusted = [f"[{h.region[0]:x}, {h.region[1]:x}) not trusted: {h.owner} {h.text}"
                 for h in expected(damage, r) if h.region != (0, 0)]
    assert [w for w in report.warnings if "not trusted" in w] == untrusted


@pytest.mark.parametrize("kind,locate", WAYS)
def test_damage_is_reported_where_it_is(damaged, kind, locate):
    damage, planted = damaged
    with opened(planted, kind, locate) as s:
        check_reports(s, expected(damage, planted[0]))


@pytest.mark.parametrize("kind,locate", WAYS)
def test_findleaks_finishes_with_the_undamaged_leaks(damaged, kind, locate):
    damage, planted = damaged
    with opened(planted, kind, locate) as s:
        check_leaks(s, damage, planted[0])


@pytest.mark.parametrize("kind", ("live", "core"))
def test_walks_keep_what_they_can_trust(damaged, kind):
    damage, planted = damaged
    r = planted[0]
    a = r.addr
    with opened(planted, kind) as s:
        if damage == "size":
            chunks = run(s, "::malloc_chunks").splitlines()
            for c in (a("resume"), a("leak_after") - 16, a("top")):
                assert any(line.startswith(f"{c:016x}") for line in chunks), hex(c)
        elif damage in ("fastcycle", "tcachecycle"):
            name, cmd = (("fastbin[2]", "::fastbins") if damage == "fastcycle" else
                         ("tcache[1] count=3", "::tcachebins"))
            chain = " -> ".join(f"0x{a(k):x}" for k in ("first", "middle", "last"))
            assert f"{name} [3]: {chain}" in run(s, cmd).splitlines()
        elif damage == "bincycle":
            assert run(s, "::unsortedbin").splitlines()[1] == \
                f"unsorted [2]: 0x{a('first'):x} -> 0x{a('last'):x}"
        elif damage == "wildfd":
            # the fd walk stops at the middle chunk; the third comes back along bk
            chain = " -> ".join(f"0x{a(k):x}" for k in ("first", "middle", "third"))
            out = run(s, "::smallbins").splitlines()
            assert out[1] == f"smallbin[16] [3]: {chain}"
            assert f"{a('third'):016x}" not in run(s, "::ptmalloc_verify")
        elif damage == "top":
            assert run(s, "::arenas").splitlines()[1].split()[3] == f"{a('top'):016x}"
        elif damage == "topptr":
            # the walk ends at the false top; the leak behind it is not reported (findleaks
            # says the region is not trusted instead)
            chunks = run(s, f"0x{a('main_arena'):x}::malloc_chunks").splitlines()
            assert chunks[-1].split() == [f"{a('false_top'):016x}", "0x20", "P--", "top"]
        else:
            assert [int(x, 16) for x in run(s, "::walk ptmalloc_arena").split()] == [
                a("main_arena"), a("arena2"), a("arena1")]
            heaps = run(s, "::heaps").splitlines()[1:]
            assert [int(h.split()[0], 16) for h in heaps] == [a("main_arena"), a("arena2"),
                                                             a("arena1")]


@pytest.fixture(scope="module", params=("fastcycle", "tcachecycle", "wildfd", "arenanext"))
def damaged_231(request, build_dir):
    """The damage under glibc 2.31 (no safe-linking; the tcache key is the tcache), run by
    that release's loader as test_ptmalloc_versions runs it: (damage, release tuple)."""
    from test_ptmalloc_versions import _build, release_with

    rel = release_with((2, 31))
    exe = _build(rel, build_dir, "ptmalloc_damage")
    r = start_fixture(*rel.loader, exe, request.param)
    try:
        core = gcore(r.pid, build_dir / f"damage-2.31-{request.param}")
        yield request.param, (rel, r, "", core)
    finally:
        r.stop()


@pytest.mark.parametrize("kind", ("live", "core"))
def test_damage_under_glibc_2_31(damaged_231, kind):
    from test_ptmalloc_versions import opened as opened_release

    damage, rel = damaged_231
    r = rel[1]
    with opened_release(rel, kind, "symbols") as s:
        assert "safe-linking off" in run(s, "::ptmalloc")
        check_reports(s, expected(damage, r))
    with opened_release(rel, kind, "symbols") as s:
        check_leaks(s, damage, r)
