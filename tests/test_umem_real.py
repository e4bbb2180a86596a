"""The umem dcmds on real libumem processes and on their cores, for every build in
../shared/umem/ (tests/umem_builds.py; skipped where that folder is absent).

Each program runs with UMEM_DEBUG=default UMEM_LOGGING=transaction and libumem's malloc
preloaded, or linked statically: the classic example of shared/reference/mdb.md (one leak, a
write after free), also with the libtool file layout (the mapped file libumem.so.N.0.0), and a
program with oversize and list buffers. The builds differ in UMEM_MAXBUF (16 KiB before the
2016 tree, 128 KiB since), so the second program makes one allocation that is oversize in the
classic build only, and in whether they record allocation stacks (v2 does).
"""

from __future__ import annotations

import re

import pytest
from umem_builds import (assert_only_damage, build_params, compile_c, hexes, mdb, started,
                         table_totals, targets)

@pytest.fixture(scope="module", params=build_params("plain", "libtool"))
def seed(request, tmp_path_factory):
    """(build, Running, core) of fixtures/umem_seed.c with the build's malloc preloaded, from
    the build's own folder or laid out as libtool installs it."""
    build, layout = request.param
    d = tmp_path_factory.mktemp("umem_seed")
    if layout == "libtool":
        build = build.libtool_layout(d)
    exe = compile_c("umem_seed.c", d / "seed")
    r, core = started(exe, cores=d, preload=build.malloc)
    try:
        with open(f"/proc/{r.pid}/maps") as f:  # the file the process maps, as named there
            assert f"/{build.shared().name}\n" in f.read()
        yield build, r, core
    finally:
        r.stop()


def seed_buf(r, key: str) -> int:
    """The buffer behind a malloc(50) pointer (malloc's tag takes 16 bytes before it)."""
    return r.addr(key) - 16


def test_seed_one_leak_with_its_stack(seed):
    build, r, core = seed
    leak = seed_buf(r, "leak")
    for t in targets(r, core):
        out = mdb(t, "::findleaks; ::walk leakbuf; ::findleaks -d")
        assert hexes(out) == {leak}
        assert " MMAP" not in out and table_totals(out) == ["1 buffer, 80 bytes"] * 2
        row = next(x for x in out.splitlines() if x.startswith("0000"))
        assert row.split()[-1] == ("test_leak_malloc+0x12" if build.v2 else "0")
        long = out.splitlines()
        at = long.index("umem_alloc_80 leak: 1 buffer, 80 bytes")
        assert long[at + 1:at + 3] == [
            "            ADDR          BUFADDR        TIMESTAMP           THREAD",
            "                            CACHE          LASTLOG         CONTENTS"]
        values = long[at + 3].split()
        assert int(values[1], 16) == leak
        thread = int(r.info["thread"], 16) & 0xFFFFFFFF  # mdb's %d of the pthread_t
        assert int(values[3]) == (thread - (1 << 32) if thread >> 31 else thread)
        frames = [x.strip() for x in long[at + 5:long.index("", at)]]
        if build.v2:  # libumem's frames, then the caller and main, as mdb shows them
            lib = build.shared().name
            assert frames[0].startswith(f"{lib}`umem_cache_alloc")
            assert [f.split("+")[0] for f in frames[-3:-1]] == ["test_leak_malloc", "main"]
            assert all(f.startswith(f"{lib}`") for f in frames[:frames.index(
                next(f for f in frames if f.startswith("test_leak_malloc")))])
        else:
            assert frames == []


def test_seed_write_after_free_found_by_verify_and_whatis(seed):
    _build, r, core = seed
    freed = seed_buf(r, "freed")
    for t in targets(r, core):
        lines = mdb(t, f"::umem_verify; {freed + 16:x}::whatis -q; {freed + 16:x}::whatis"
                    ).splitlines()
        n = next(i for i, x in enumerate(lines) if x.startswith(f"{freed + 16:x} is "))
        table, rest = lines[1:n], lines[n:]
        assert all(x.endswith(" clean") or x.startswith("umem_alloc_80 ") for x in table)
        assert_only_damage(t, "\n".join(table), freed)
        assert re.fullmatch(rf"{freed + 16:x} is {freed:x}\+10, bufctl [0-9a-f]+ freed from "
                            r"umem_alloc_80", rest[0])
        assert rest[1] == f"{freed + 16:x} is {freed:x}+10, freed from umem_alloc_80:"
        assert rest[2].split() == ["ADDR", "BUFADDR", "TIMESTAMP", "THREAD"]


def test_seed_status_and_log(seed):
    build, r, core = seed
    for t in targets(r, core):
        out, err = mdb(t, "::umem_status", stderr=True)
        assert out.startswith("Status:\t\tready and active\nConcurrency:\t")
        assert "Logs:\t\ttransaction=64k \nMessage buffer:\n" in out
        # neither build keeps its message ring: gcc drops the write-only static, as DWARF says
        assert err == (f"mdbpy: {build.shared().name} keeps no message buffer: its compiler "
                       "dropped umem_error_buffer (only ever written), so libumem's messages "
                       "went to stderr only\n")
        log = mdb(t, "::umalog").split("\n\n")
        entry = next(e for e in log if f"addr={seed_buf(r, 'leak'):x}  umem_alloc_80" in e)
        frames = [x.strip() for x in entry.splitlines()[1:]]
        assert entry.lstrip("\n").startswith("T-")
        if build.v2:
            assert [f.split("+")[0] for f in frames if "`" not in f][:2] == [
                "test_leak_malloc", "main"]
        else:
            assert frames == []


PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
struct node { struct node *next; char tag[40]; };
struct node *list_head;
void *leaked, *freed, *big, *mid;
static __attribute__((noinline)) void make_leaks(void) {
    void *p = malloc(50);         /* leaked: only this frame ever held it */
    void *q = malloc(200000);     /* oversize (umem_oversize arena) in both revisions, leaked */
    void *m = malloc(100000);     /* oversize in 5cc22b9, a umem_alloc_* buffer since 2016 */
    leaked = (void *)~(unsigned long)p;  /* kept for the test, but not as a pointer */
    big = (void *)~(unsigned long)q;
    mid = (void *)~(unsigned long)m;
}
int main(void) {
    for (int i = 0; i < 5; i++) {
        struct node *n = malloc(sizeof *n);
        n->next = list_head;
        snprintf(n->tag, sizeof n->tag, "node%d", i);
        list_head = n;
    }
    make_leaks();
    char *f = malloc(50);
    free(f);
    f[0] = 1;                     /* a write after free */
    freed = (void *)~(unsigned long)f;
    f = 0;
    printf("READY leak=%lx freed=%lx big=%lx mid=%lx head=%p\n", ~(unsigned long)leaked,
           ~(unsigned long)freed, ~(unsigned long)big, ~(unsigned long)mid, (void *)list_head);
    fflush(stdout);
    pause();
    return 0;
}
"""


@pytest.fixture(scope="module", params=build_params())
def proc(request, tmp_path_factory):
    """(build, Running, core) of PROGRAM with the build's malloc preloaded."""
    build = request.param
    d = tmp_path_factory.mktemp("umem")
    src = d / "umemprog.c"
    src.write_text(PROGRAM)
    r, core = started(compile_c(src, d / "umemprog"), cores=d, preload=build.malloc)
    try:
        yield build, r, core
    finally:
        r.stop()


def test_status_caches_and_walkers(proc):
    _build, r, core = proc
    for t in targets(r, core):
        out = mdb(t, "::umem_status; ::umem_cache")
        assert out.startswith("Status:\t\tready and active\nConcurrency:\t")
        assert "Logs:\t\ttransaction=64k \n" in out
        assert " umem_alloc_80  " in out and " umem_bufctl_audit_cache " in out
        # malloc(50) + 16 lands in umem_alloc_80; the list nodes (48 + 16) in umem_alloc_64
        bufs, nodes = (hexes(x) for x in mdb(t, "::walk umem_alloc_80; ::echo --; "
                                             "::walk umem_alloc_64").split("--"))
        assert r.addr("leak") - 16 in bufs
        assert r.addr("freed") - 16 not in bufs
        assert r.addr("head") - 16 in nodes and len(nodes) == 5


def assert_exact_leaks(build, r, target) -> None:
    """::findleaks finds the three planted leaks and nothing else (no mmap rows: the memory
    v2 maps for its per-CPU arrays is libumem's). malloc(100000) is oversize under 5cc22b9's
    UMEM_MAXBUF (16 KiB) and an umem_alloc_* buffer from 2016 on (128 KiB), in the smallest
    cache that holds 100016 bytes; the 200000-byte leak is oversize in all."""
    out = mdb(target, "::findleaks; ::walk leakbuf; ::umem_cache; ::findleaks -d")
    assert hexes(out) == {r.addr("leak") - 16, r.addr("big") - 16, r.addr("mid") - 16}
    assert " MMAP" not in out
    # -d: the oversize leaks as mdb's leaky prints them, the representative (the oldest) as
    # ::vmem_seg -v does; two of them (5cc22b9) have the same empty stack: one group
    lines = out.splitlines()
    at = lines.index("umem_oversize leak: 1 vmem_seg, 200016 bytes" if build.maxbuf > 100016
                     else "umem_oversize leak: 2 vmem_segs, 100016-200016 bytes each, "
                     "300032 bytes total")
    assert lines[at + 1].split() == ["ADDR", "TYPE", "START", "END", "SIZE"]
    assert lines[at + 3].split()[1:] == [
        "ALLC", f"{r.addr('big') - 16:x}", f"{r.addr('big') + 200000:x}", "200016"]
    if build.maxbuf > 100016:
        mid = min(int(x.split()[4]) for x in out.splitlines() if " umem_alloc_" in x and
                  int(x.split()[4]) >= 100016)
        totals = ["1 oversized leak, 200016 bytes", f"2 buffers, {80 + mid} bytes"]
    else:
        totals = ["2 oversized leaks, 300032 bytes", "1 buffer, 80 bytes"]
    assert table_totals(out) == totals * 2


def test_findleaks_reports_exactly_the_leaks(proc):
    build, r, core = proc
    for t in targets(r, core):
        assert_exact_leaks(build, r, t)


def test_malloc_dist_spans_the_builds_maxbuf(proc):
    """::umem_malloc_dist covers malloc sizes up to UMEM_MAXBUF - 16 of the build; its top
    bucket holds the malloc(100000) from 2016 on and nothing in 5cc22b9 (oversize there)."""
    build, r, core = proc
    top, count = (str(build.maxbuf - 16), "1" if build.maxbuf > 100016 else "0")
    for t in targets(r, core):
        last = mdb(t, "::umem_malloc_dist -b 4").split()[-3:]
        assert last[0].endswith(f"-{top}") and last[-1] == count, last


def test_verify_finds_the_write_after_free(proc):
    _build, r, core = proc
    buf = r.addr("freed") - 16
    for t in targets(r, core):
        assert_only_damage(t, mdb(t, "::umem_verify"), buf)


def test_log_and_vmem(proc):
    _build, r, core = proc
    for t in targets(r, core):
        log = mdb(t, "::umem_log").splitlines()
        assert log[0].split() == ["CPU", "ADDR", "BUFADDR", "TIMESTAMP", "THREAD"]
        assert len(log) > 10
        vm = mdb(t, "::vmem")
        assert "   mmap_heap " in vm and "     umem_oversize " in vm


def test_layouts_come_from_the_librarys_dwarf(proc):
    """A libumem built with -g: the dmod binds its structs from the library's DWARF, and
    DWARF equals the builtin descriptors of the release the library's symbols name (so a
    stripped build of it is read right too). malloc's tag lives in libumem_malloc before v2
    and stays builtin there."""
    from mdbpy.layout.bind import Binder
    from mdbpy.layout.dwarf import find_structs
    from mdbpy_commands.umem import layouts as L

    build, r, core = proc
    version = L.release(build.defines)
    descs = L.descriptors(version)
    lib = build.shared()
    dwarf = find_structs(str(lib), tuple(descs.structs), cu_hint="umem.c")
    builtin = Binder(descs, version=version)
    for name, d in dwarf.items():
        b = builtin[name]
        assert d.size == b.size, name
        assert {f: d.members[f][0] for f in b.fields} == \
            {f: x.offset for f, x in b.fields.items()}, name
        assert not set(d.members) - set(b.fields), name  # no field the descriptor misses
    assert sorted(n for n in descs.structs if n not in dwarf) == (
        [] if build.v2 else ["malloc_data"])
    ver = "v" + ".".join(map(str, version))
    for t in targets(r, core):
        rows = {x[1]: " ".join(x[3:]) for x in (y.split() for y in mdb(t, "::layout").splitlines())
                if x and x[0] == "umem"}
        assert rows == {n: f"DWARF {lib.name} debug info" if n in dwarf else f"builtin x86_64 {ver}"
                        for n in descs.structs}


# -- libumem linked statically: the build's archives, libumem_malloc.a and libumem.a ---------
@pytest.fixture(scope="module", params=build_params())
def static_proc(request, tmp_path_factory):
    """The same program with libumem and its malloc linked into the executable (glibc stays
    shared, so its own calls to malloc reach libumem's too): no libumem.so is loaded, and the
    module finds libumem's globals in the executable. v2 needs libm (log2)."""
    build = request.param
    d = tmp_path_factory.mktemp("umem_static")
    src = d / "umemstatic.c"
    src.write_text(PROGRAM)
    exe = compile_c(src, d / "umemstatic", build.archive("libumem_malloc"),
                    build.archive("libumem"), "-ldl", "-lm")
    r, core = started(exe, cores=d)
    try:
        with open(f"/proc/{r.pid}/maps") as f:
            assert "libumem" not in f.read()
        yield build, r, core
    finally:
        r.stop()


def test_static_libumem(static_proc):
    build, r, core = static_proc
    for t in targets(r, core):
        out = mdb(t, "::umem_status; ::umem_cache; ::walk umem_alloc_64")
        assert out.startswith("Status:\t\tready and active\nConcurrency:\t")
        assert " umem_alloc_80  " in out and " umem_bufctl_audit_cache " in out
        nodes = hexes(out)
        assert r.addr("head") - 16 in nodes and len(nodes) == 5
        assert_exact_leaks(build, r, t)
        if build.v2:  # CALLER: the first frame outside libumem's functions in the executable
            rows = [x.split()[-1] for x in mdb(t, "::findleaks").splitlines()
                    if x.startswith("0000") or x.startswith("200016 ")]
            assert sorted(x.split("+")[0] for x in rows) == ["make_leaks"] * 3, rows
