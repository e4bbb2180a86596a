"""The umem dcmds and walkers on a synthetic libumem heap (tests/umem_synth.py): exact output
against golden files, and exact findleaks and verify results against the heap's truth.

Regenerate the golden files deliberately with MDBPY_REGEN_GOLDEN=1 after checking a change.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from umem_synth import THREAD2, exe_pc, leaky_heap

from mdbpy.heap.leaks import find_leaks
from mdbpy.heap.model import KIND_MMAP, KIND_OVERSIZE, KIND_SBRK
from mdbpy.lang.engine import Engine

GOLDEN = Path(__file__).parent / "golden" / "umem"


class Run:
    def __init__(self):
        self.u, self.t = leaky_heap()
        self.out, self.err = io.StringIO(), io.StringIO()
        self.session = self.u.session(out=self.out, err=self.err)
        self.engine = Engine(self.session)

    def __call__(self, cmd: str) -> str:
        for f in (self.out, self.err):
            f.seek(0)
            f.truncate()
        self.engine.run_string(cmd)
        return self.out.getvalue()


@pytest.fixture(scope="module")
def run():
    return Run()


def golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("MDBPY_REGEN_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


CASES = {
    "umem_status": "::umem_status",
    "umem_cache": "::umem_cache",
    "umastat": "::umastat",
    "umem_verify": "::umem_verify",
    "umem_verify_caches": "::walk umem_cache | ::umem_verify",
    "vmem": "::vmem",
    "vmem_seg": "*umem_oversize_arena::walk vmem_seg | ::vmem_seg",
    "vmem_seg_sv": "*umem_oversize_arena::walk vmem_alloc | ::vmem_seg -s; "
                   "*umem_oversize_arena::walk vmem_alloc | ::vmem_seg -v",
    "vmem_seg_filters": "*umem_oversize_arena::walk vmem_seg | ::vmem_seg -T SPAN; "
                        "*umem_oversize_arena::walk vmem_seg | ::vmem_seg -c leak_some",
    "bufctl": "::walk bufctl | ::bufctl",
    "bufctl_v": "::walk bufctl | ::bufctl -v",
    "bufctl_filters": "::walk bufctl | ::bufctl -c make_node; "
                      "::walk bufctl | ::bufctl -t 7fcc7a657640",
    "bufctl_h": "F_BUFCTL::bufctl -h",
    "umalog": "::umalog",
    "umem_log": "::umem_log",
    "umausers": "::umausers -e; ::umausers",
    "umausers_f": "::umausers -f umem_alloc_32",
    "allocdby": "7fcc7a657640::allocdby",
    "freedby": "7fcc7a657640::freedby",
    "malloc_info": "::umem_malloc_info",
    "malloc_dist": "::umem_malloc_dist -b 16",
    "findleaks": "::findleaks",
    "walkers": "::walk umem_cache; ::walk umem_alloc_80; ::walk freemem | ::head -5; "
               "::walk bufctl; ::walk freectl | ::head -3; ::walk vmem; ::walk vmem_postfix",
    "cache_walkers": "*umem_alloc_80_cache_addr::walk umem_slab; "
                     "*umem_alloc_80_cache_addr::walk umem_cpu_cache; "
                     "*umem_alloc_80_cache_addr::walk umem_hash; ::walk umem_cpu",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_output(run, name):
    c80 = run.t["caches"]["umem_alloc_80"]
    cmd = CASES[name].replace("*umem_alloc_80_cache_addr", f"{c80.addr:x}").replace(
        "F_BUFCTL", f"{c80.bufctl[run.t['F']]:x}")
    golden(name, run(cmd) + run.err.getvalue())


def test_findleaks_finds_exactly_the_leaks(run):
    t = run.t
    alloc = run.session.allocators()[0]
    report = find_leaks(run.session, [alloc])
    leaked = sorted(m.addr for m in report.leaks)
    assert leaked == sorted([t["L1"], t["L2"], t["L3"], t["P1"], t["O1"], 0x7F3A40800000,
                             0x555555600000])
    kinds = {m.addr: m.kind for m in report.leaks}
    assert kinds[t["O1"]] == KIND_OVERSIZE and kinds[0x7F3A40800000] == KIND_MMAP
    assert kinds[0x555555600000] == KIND_SBRK
    # L1 and L2 share a stack and a cache: one group, the older (L1) first
    grp = next(g for g in report.groups if t["L1"] in [m.addr for m in g.members])
    assert [m.addr for m in grp.members] == [t["L1"], t["L2"]]
    assert grp.rep.record.thread == THREAD2
    # S (live stack slot) and R (register) are not leaks; L3 (dead stack only) is
    assert t["S"] not in leaked and t["R"] not in leaked


def test_verify_and_whatis(run):
    t = run.t
    alloc = run.session.allocators()[0]
    problems = {(p.addr, p.note) for p in alloc.verify()}
    assert problems == {(t["C1"], "allocated"), (t["F"], "free")}
    w = alloc.whatis(t["L3"] + 0x20)
    assert (w.base, w.group, w.state) == (t["L3"], "umem_alloc_80", 1)
    assert w.record.addr and w.record.stack[3] == exe_pc("read_config")


def test_bufctl_audit_macro_alias(run, tmp_path):
    """`addr$<bufctl_audit` is mdb's built-in macro alias for `addr::bufctl -v` ($M lists it);
    a macro file of that name on the macro path comes first."""
    bufctl = int(run("::walk bufctl").split()[0], 16)
    want = run(f"{bufctl:x}::bufctl -v")
    assert want.count("\n") > 2 and run.err.getvalue() == ""
    assert run(f"{bufctl:x}$<bufctl_audit") == want
    assert run("$M") == f"{'bufctl_audit':<24} - ::bufctl -v\n"
    (tmp_path / "bufctl_audit").write_text("=X\n")
    run(f"::set -I {tmp_path}")
    try:
        assert run("0t42$<bufctl_audit") == run("0t42=X") != want  # dot is 0t42 in the file
    finally:
        run("::set -I .")
    run("$<no_such_macro")
    assert run.err.getvalue() == "mdbpy: failed to open no_such_macro (see ::help '$<')\n"


def test_contents_partition_each_cache(run):
    from mdbpy_commands.umem.contents import cache_contents
    from mdbpy_commands.umem.state import Umem

    umem = Umem.get(run.session)
    t = run.t
    c32 = umem.cache(t["caches"]["umem_alloc_32"].addr)
    ct = cache_contents(umem, c32)
    alloc = set(ct.bufs[ct.alloc].tolist())
    assert alloc == {t["L1"], t["L2"], t["S"]}
    assert set(ct.bufs[ct.in_mag].tolist()) == {t["M1"], t["M2"]}
    c16 = umem.cache(t["caches"]["umem_alloc_16"].addr)
    assert set(cache_contents(umem, c16).bufs[cache_contents(umem, c16).in_mag].tolist()) == \
        set(t["D"])


def test_errors_are_one_line(run):
    assert run("::umem_verify -x") == ""
    assert run.err.getvalue().startswith("mdbpy: ::umem_verify takes no arguments\nUsage: ")
    run(f"{run.t['caches']['my_objs'].addr:x}::umem_verify")
    assert run.err.getvalue() == (f"mdbpy: cache {run.t['caches']['my_objs'].addr:x} (my_objs) "
                                  "does not have redzone checking enabled\n")
    run("::umalog bogus")
    assert run.err.getvalue().startswith("mdbpy: unknown log 'bogus'")
    run("::vmem_seg")
    assert "needs a segment address" in run.err.getvalue()
