"""The umem dcmds on a real libumem process and on its core.

Needs a portable libumem built from gburd/libumem (5cc22b9): set MDBPY_LIBUMEM to the directory
holding libumem.so.0 and libumem_malloc.so.0 (unstripped). Skipped when it is not set. The
program runs with UMEM_DEBUG=default UMEM_LOGGING=transaction and its malloc preloaded.
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
void *leaked, *freed, *big;
static __attribute__((noinline)) void make_leaks(void) {
    void *p = malloc(50);         /* leaked: only this frame ever held it */
    void *q = malloc(100000);     /* oversize (umem_oversize arena), leaked */
    leaked = (void *)~(unsigned long)p;  /* kept for the test, but not as a pointer */
    big = (void *)~(unsigned long)q;
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
    printf("READY leak=%lx freed=%lx big=%lx head=%p\n", ~(unsigned long)leaked,
           ~(unsigned long)freed, ~(unsigned long)big, (void *)list_head);
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


def test_findleaks_reports_exactly_the_leaks(proc):
    r, _core = proc
    for t in targets(proc):
        out = mdb(t, "::findleaks; ::walk leakbuf")
        table, _, walk = out.rpartition("bytes\n")
        leaks = {int(x, 16) for x in walk.split()}
        assert r.addr("leak") - 16 in leaks
        assert r.addr("big") - 16 in leaks
        assert r.addr("head") - 16 not in leaks
        assert "oversized leak" in table and "umem_alloc_80" not in table


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
        assert rows == {n: "DWARF libumem.so.0" if n in dwarf else "builtin x86_64 v2010.6"
                        for n in L.STRUCT_NAMES}
        assert sorted(n for n in rows if n not in dwarf) == ["malloc_data"]
