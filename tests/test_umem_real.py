"""The umem dcmds on a real libumem process and on its core.

Needs a portable libumem built from gburd/libumem, either revision (5cc22b9 of 2010 or 53f5df3 of
2016): set MDBPY_LIBUMEM to the directory holding libumem.so.0 and libumem_malloc.so.0
(unstripped). Skipped when it is not set. The program runs with UMEM_DEBUG=default
UMEM_LOGGING=transaction and its malloc preloaded. The revisions differ in UMEM_MAXBUF (16 KiB,
128 KiB), so the program makes one allocation that is oversize in the classic one only. With
libumem.a and libumem_malloc.a in that directory too, the program is also linked with them
statically (test_static_libumem).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support import gcore, run_mdbpy, start_fixture

LIBUMEM = os.environ.get("MDBPY_LIBUMEM")
pytestmark = pytest.mark.skipif(
    not LIBUMEM or not os.path.exists(os.path.join(LIBUMEM or "", "libumem_malloc.so.0")),
    reason="MDBPY_LIBUMEM (a directory with a built libumem_malloc.so.0) is not set")

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
    void *m = malloc(100000);     /* oversize in 5cc22b9, a umem_alloc_* buffer in 53f5df3 */
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


@pytest.fixture(scope="module")
def proc(tmp_path_factory):
    d = tmp_path_factory.mktemp("umem")
    src = d / "umemprog.c"
    src.write_text(PROGRAM)
    exe = d / "umemprog"
    subprocess.run(["gcc", "-g", "-O0", "-o", str(exe), str(src)], check=True)
    env = dict(os.environ, UMEM_DEBUG="default", UMEM_LOGGING="transaction",
               LD_PRELOAD=str(Path(LIBUMEM) / "libumem_malloc.so.0"))
    r = start_fixture(exe, env=env)
    try:
        core = gcore(r.pid, d / "umemprog-core")
        yield r, core
    finally:
        r.stop()


def mdb(target, cmds: str) -> str:
    p = run_mdbpy(*target, "-e", cmds)
    assert p.returncode == 0, p.stderr
    return p.stdout


def targets(proc):
    r, core = proc
    return [("-p", r.pid), (core,)]


def test_status_caches_and_walkers(proc):
    r, _core = proc
    for t in targets(proc):
        out = mdb(t, "::umem_status")
        assert out.startswith("Status:\t\tready and active\nConcurrency:\t")
        assert "Logs:\t\ttransaction=64k \n" in out
        caches = mdb(t, "::umem_cache")
        assert " umem_alloc_80  " in caches and " umem_bufctl_audit_cache " in caches
        # malloc(50) + 16 lands in umem_alloc_80; the list nodes (48 + 16) in umem_alloc_64
        bufs = {int(x, 16) for x in mdb(t, "::walk umem_alloc_80").split()}
        assert r.addr("leak") - 16 in bufs
        assert r.addr("freed") - 16 not in bufs
        nodes = {int(x, 16) for x in mdb(t, "::walk umem_alloc_64").split()}
        assert r.addr("head") - 16 in nodes and len(nodes) == 5


def revision() -> str:
    """Which libumem MDBPY_LIBUMEM holds, told by its dynamic symbols (not by mdbpy): the 2016
    one exports umem_ptc_size."""
    syms = subprocess.run(["nm", "-D", "--defined-only", os.path.join(LIBUMEM, "libumem.so.0")],
                          capture_output=True, text=True, check=True).stdout.split()
    return "53f5df3" if "umem_ptc_size" in syms else "5cc22b9"


def assert_exact_leaks(r, target) -> None:
    """::findleaks finds the three planted leaks and nothing else. malloc(100000) is oversize
    under 5cc22b9's UMEM_MAXBUF (16 KiB) and a umem_alloc_131072 buffer under 53f5df3's
    (128 KiB); the 200000-byte leak is oversize in both."""
    if revision() == "53f5df3":
        totals = ["1 oversized leak, 200016 bytes", "2 buffers, 131152 bytes"]
    else:
        totals = ["2 oversized leaks, 300032 bytes", "1 buffer, 80 bytes"]
    out = mdb(target, "::findleaks; ::walk leakbuf")
    table, _, walk = out.rpartition("bytes\n")
    leaks = {int(x, 16) for x in walk.split()}
    assert leaks == {r.addr("leak") - 16, r.addr("big") - 16, r.addr("mid") - 16}
    assert [x.split("Total", 1)[1].strip() for x in (table + "bytes").splitlines()
            if x.lstrip().startswith("Total")] == totals


def test_findleaks_reports_exactly_the_leaks(proc):
    for t in targets(proc):
        assert_exact_leaks(proc[0], t)


def test_malloc_dist_spans_the_revisions_maxbuf(proc):
    """::umem_malloc_dist covers malloc sizes up to UMEM_MAXBUF - 16 of the revision; its top
    bucket holds the malloc(100000) in 53f5df3 and nothing in 5cc22b9 (oversize there)."""
    top, count = ("131056", "1") if revision() == "53f5df3" else ("16368", "0")
    for t in targets(proc):
        last = mdb(t, "::umem_malloc_dist -b 4").split()[-3:]
        assert last[0].endswith(f"-{top}") and last[-1] == count, last


def test_verify_finds_the_write_after_free(proc):
    r, _core = proc
    buf = r.addr("freed") - 16
    for t in targets(proc):
        out = mdb(t, "::umem_verify")
        line = next(x for x in out.splitlines() if x.startswith("umem_alloc_80 "))
        assert line.endswith(" 1 corrupt buffer")
        addr = line.split()[1]
        assert mdb(t, f"{addr}::umem_verify") == (
            "Summary for cache 'umem_alloc_80'\n"
            f"  buffer {buf:x} (free) seems corrupted, at {buf + 16:x}\n")


def test_log_and_vmem(proc):
    for t in targets(proc):
        log = mdb(t, "::umem_log").splitlines()
        assert log[0].split() == ["CPU", "ADDR", "BUFADDR", "TIMESTAMP", "THREAD"]
        assert len(log) > 10
        vm = mdb(t, "::vmem")
        assert "   mmap_heap " in vm and "     umem_oversize " in vm


def test_layouts_come_from_the_librarys_dwarf(proc):
    """A libumem built with -g: the dmod binds its structs from the library's DWARF (malloc's
    tag lives in libumem_malloc, so it stays builtin), and DWARF equals the builtin layouts."""
    from mdbpy.layout.bind import Binder
    from mdbpy.layout.dwarf import find_structs
    from mdbpy_commands.umem import layouts as L

    lib = os.path.join(LIBUMEM, "libumem.so.0")
    dwarf = find_structs(lib, L.STRUCT_NAMES, cu_hint="umem.c")
    if not dwarf:
        pytest.skip("this libumem was built without -g")
    builtin = Binder(L.UMEM_LAYOUTS, version=L.CLASSIC)
    for name, d in dwarf.items():
        b = builtin[name]
        assert d.size == b.size, name
        assert {f: d.members[f][0] for f in b.fields} == \
            {f: x.offset for f, x in b.fields.items()}, name
    for t in targets(proc):
        rows = {r[1]: " ".join(r[3:]) for r in (x.split() for x in mdb(t, "::layout").splitlines())
                if r and r[0] == "umem"}
        version = "v2016.11" if revision() == "53f5df3" else "v2010.6"
        assert rows == {n: "DWARF libumem.so.0" if n in dwarf else f"builtin x86_64 {version}"
                        for n in L.STRUCT_NAMES}
        assert sorted(n for n in rows if n not in dwarf) == ["malloc_data"]


# -- libumem linked statically: its archives (libumem.a, libumem_malloc.a) in MDBPY_LIBUMEM ----
ARCHIVES = [os.path.join(LIBUMEM or "", a) for a in ("libumem_malloc.a", "libumem.a")]


@pytest.fixture(scope="module")
def static_proc(tmp_path_factory):
    """The same program with libumem and its malloc linked into the executable (glibc stays
    shared, so its own calls to malloc reach libumem's too): no libumem.so is loaded, and the
    module finds libumem's globals in the executable."""
    if not all(os.path.exists(a) for a in ARCHIVES):
        pytest.skip("no libumem.a and libumem_malloc.a in MDBPY_LIBUMEM")
    d = tmp_path_factory.mktemp("umem_static")
    src = d / "umemstatic.c"
    src.write_text(PROGRAM)
    exe = d / "umemstatic"
    subprocess.run(["gcc", "-g", "-O0", "-o", str(exe), str(src), *ARCHIVES, "-lpthread",
                    "-ldl"], check=True)
    env = dict(os.environ, UMEM_DEBUG="default", UMEM_LOGGING="transaction")
    env.pop("LD_PRELOAD", None)
    r = start_fixture(exe, env=env)
    try:
        with open(f"/proc/{r.pid}/maps") as f:
            assert "libumem" not in f.read()
        yield r, gcore(r.pid, d / "umemstatic-core")
    finally:
        r.stop()


def test_static_libumem(static_proc):
    r, _core = static_proc
    for t in targets(static_proc):
        out = mdb(t, "::umem_status")
        assert out.startswith("Status:\t\tready and active\nConcurrency:\t")
        caches = mdb(t, "::umem_cache")
        assert " umem_alloc_80  " in caches and " umem_bufctl_audit_cache " in caches
        nodes = {int(x, 16) for x in mdb(t, "::walk umem_alloc_64").split()}
        assert r.addr("head") - 16 in nodes and len(nodes) == 5
        assert_exact_leaks(r, t)
