"""The sim dmod on simulated heaps the simulator damaged on purpose (mdbpy.sim.damage): each kind
of damage is reported once with where it is, the walks go on with what they can still trust,
and ::findleaks and ::heap_verify give exactly the ground truth for every object the damage did
not put at risk, naming the regions they could not trust.

The heap: a cache `node` of three slabs whose objects sit in a global table (some freed, some
dropped from the table: leaked), and a few kmalloc objects. Each test damages it through the
scenario's `damage` statement; where a test needs a particular victim (a slab list pointing at
itself), it takes the first seed that gives one, so the damage is still the simulator's own.
"""

from __future__ import annotations

import io

import pytest

from mdbpy.heap.leaks import find_leaks
from mdbpy.lang.engine import Engine
from mdbpy.session import Session
from mdbpy.sim.build import build, write
from mdbpy.sim.machine import SLAB_BASE
from mdbpy.sim.scenario import ScenarioError
from mdbpy.sim.slub import bind
from mdbpy.target.core import open_file_target

B = bind()
NODES = 48


def scenario() -> str:
    lines = ["program dmgheap", "seed 3", "cache node 64", f"global table {8 * NODES}",
             "global misc 32", "call main", "call fill"]
    for k in range(NODES):
        lines += [f"n{k} = alloc node", f"store table+{8 * k} = n{k}", f"write n{k}+8 u64 {k}"]
    lines += ["ret", "call churn"]
    for k in range(0, NODES, 5):  # freed: the free lists of every slab
        lines += [f"store table+{8 * k} = null", f"free n{k}"]
    for k in (3, 17, 31, 44):  # leaked: dropped from the table, never freed
        lines += [f"store table+{8 * k} = null"]
    lines += ["s = kmalloc 200", "store misc = s", "t = kmalloc 24", "store misc+8 = t",
              "lost = kmalloc 40", "ret"]
    return "\n".join(lines) + "\n"


SCENARIO = scenario()
VERIFY_KINDS = {"Redzone overwritten": "redzone", "Poison overwritten": "poison",
                "Object padding overwritten": "padding", "Object already free": "double free"}


class Run:
    """A built (and maybe damaged) scenario written as a core and opened in a session."""

    def __init__(self, damage: str, tmp_path):
        self.result = build(SCENARIO + damage)
        self.truth = self.result.truth
        prog, core, _ = write(self.result, str(tmp_path))
        self.out, self.err = io.StringIO(), io.StringIO()
        self.session = Session(open_file_target(core, exe=prog), out=self.out, err=self.err)
        self.engine = Engine(self.session)
        (self.sim,) = self.session.allocators()
        self.sim.caches()  # the walks, and their warnings, happen here
        self.warnings = self.err.getvalue().splitlines()

    @property
    def damage(self) -> list[dict]:
        return self.truth["damage"]

    @property
    def risk(self) -> set[int]:
        return {o for d in self.damage for o in d["objects"]}

    def leaks(self):
        report = find_leaks(self.session, [self.sim])
        return {m.addr for m in report.leaks}, report.warnings

    def run(self, cmd: str) -> str:
        self.out.seek(0)
        self.out.truncate()
        self.engine.run_string(cmd)
        return self.out.getvalue()

    def assert_truth_outside_risk(self) -> None:
        """Leaks and slub_debug findings equal the truth's, but for objects at risk."""
        risk = self.risk
        leaks, _ = self.leaks()
        assert leaks - risk == {x["address"] for x in self.truth["leaks"]} - risk
        got = {(p.addr, VERIFY_KINDS[p.kind]) for p in self.sim.verify()
               if p.kind in VERIFY_KINDS and p.addr not in risk}
        assert got == {(x["address"], x["kind"]) for x in self.truth["corrupt"]
                       if x["address"] not in risk}


def first_seed(kind: str, want, tries: int = 200) -> str:
    """The `damage` statement of the first seed whose single damage of `kind` satisfies
    want(damage, result)."""
    for seed in range(tries):
        stmt = f"damage 1 seed {seed} {kind}\n"
        r = build(SCENARIO + stmt)
        if want(r.truth["damage"][0], r):
            return stmt
    raise AssertionError(f"no seed below {tries} gives the wanted {kind} damage")


def test_undamaged_heap_is_exact(tmp_path):
    r = Run("", tmp_path)
    assert r.warnings == [] and r.damage == []
    leaks, warnings = r.leaks()
    assert warnings == []
    assert leaks == {x["address"] for x in r.truth["leaks"]} and len(leaks) == 5
    assert r.truth["caches"]["node"]["slabs"] == 3
    r.assert_truth_outside_risk()


def test_damage_is_seeded_and_recorded(tmp_path):
    a, b = build(SCENARIO + "damage 5 seed 11\n"), build(SCENARIO + "damage 5 seed 11\n")
    assert a.truth["damage"] == b.truth["damage"] and len(a.truth["damage"]) == 5
    assert build(SCENARIO + "damage 5 seed 12\n").truth["damage"] != a.truth["damage"]
    for d in a.truth["damage"]:
        region = a.target.read(d["address"], d["size"])
        assert int.from_bytes(region, "little") == d["new"] != d["old"]


def test_free_pointer_outside_the_slab(tmp_path):
    stmt = first_seed("freeptr", lambda d, r: d["new"] == 0xDEAD0000 + (d["new"] & 0xFFFF)
                      and "(slab" in d["what"] and "node)" in d["what"])
    r = Run(stmt, tmp_path)
    (d,) = r.damage
    slab = int(d["what"].split("slab ")[1].split(",")[0], 16)
    v = r.sim.cache_named("node").view
    base = min(d["objects"]) - v.red_left_pad
    end = base + v.objects_per_slab * v.size
    why = f"cache node slab 0x{slab:x}: free pointer 0x{d['new']:x} outside the slab"
    assert r.warnings == [f"mdbpy: sim: {why}"]
    leaks, warnings = r.leaks()
    assert warnings == [f"[{base:x}, {end:x}) not trusted: {why}"]
    # the free objects after the cut are known by their red zones: nothing is lost
    assert leaks == {x["address"] for x in r.truth["leaks"]}
    r.assert_truth_outside_risk()
    assert "BUG node: Freechain corrupt" in r.run("::heap_verify")
    out = r.run("::findleaks").splitlines()
    assert r.err.getvalue().splitlines()[-1] == (f"mdbpy: findleaks: [{base:x}, {end:x}) not "
                                                 f"trusted: {why}")
    assert out[-1].split()[:2] == ["Total", str(len(leaks))]


def test_free_list_cycle_is_a_double_free_at_its_address(tmp_path):
    r = Run(first_seed("freelist_cycle", lambda d, r: "node)" in d["what"]), tmp_path)
    (d,) = r.damage
    assert r.warnings == []  # the red zones tell every cut-off object: nothing untrusted
    twice = [p for p in r.sim.verify() if p.kind == "Object already free"]
    assert [p.addr for p in twice] == [d["new"]]
    leaks, warnings = r.leaks()
    assert warnings == [] and leaks == {x["address"] for x in r.truth["leaks"]}
    out = r.run("::heap_verify")
    assert f"INFO: Object 0x{d['new']:x} size 64: the object is on its slab's free list " \
        "twice" in out


def test_slab_list_pointing_at_itself(tmp_path):
    stmt = first_seed("slab_next", lambda d, r: d["new"] == d["address"] and d["objects"])
    r = Run(stmt, tmp_path)
    (d,) = r.damage
    slab = d["address"]
    why = (f"cache node slab list: cycle at 0x{slab:x} (linked from slab 0x{slab:x}); "
           "the slabs after it are lost")
    assert r.warnings == [f"mdbpy: sim: {why}"]
    lost = len(d["objects"]) // r.sim.cache_named("node").view.objects_per_slab
    assert [len(c.slabs) for c in r.sim.caches() if c.name == "node"] == [3 - lost]
    leaks, warnings = r.leaks()
    assert warnings == [f"[{slab:x}, {slab + B['sim_slab'].size:x}) not trusted: {why}"]
    r.assert_truth_outside_risk()


def test_slab_list_cycle_into_the_middle_of_a_run(tmp_path):
    """Slabs carved together (the generator's) have descriptors that follow each other in
    memory and in the list, and the walk reads them a run at a time. The last slab's `next`
    aimed back at the second, inside that run, is still reported as a cycle where the list
    first repeats, linked from the slab that was damaged, and every slab before it is kept."""
    from mdbpy.sim.generate import generate

    prog, core, _ = write(generate(3000, 0.01, seed=1, name="g"), str(tmp_path))

    def opened(writable=False):
        err = io.StringIO()
        session = Session(open_file_target(core, exe=prog, writable=writable),
                          out=io.StringIO(), err=err)
        (sim,) = session.allocators()
        return session, sim, err

    session, sim, _ = opened(writable=True)
    c = max(sim.caches(), key=lambda c: len(c.slab_addr))
    slabs = c.slab_addr.tolist()
    assert len(slabs) >= 4 and {b - a for a, b in zip(slabs, slabs[1:])} == {B["sim_slab"].size}
    session.target.write(slabs[-1] + B["sim_slab"].offset("next"),
                         slabs[1].to_bytes(8, "little"))
    session.close()
    session, sim, err = opened()
    (cache,) = [k for k in sim.caches() if k.name == c.name]
    assert err.getvalue().splitlines() == [
        f"mdbpy: sim: cache {c.name} slab list: cycle at 0x{slabs[1]:x} (linked from slab "
        f"0x{slabs[-1]:x}); the slabs after it are lost"]
    assert cache.slab_addr.tolist() == slabs
    session.close()


def test_cache_list_into_garbage(tmp_path):
    stmt = first_seed("cache_next", lambda d, r: d["new"] not in (0, d["address"] - 0x60)
                      and "node" not in d["what"] and d["objects"])
    r = Run(stmt, tmp_path)
    (d,) = r.damage
    cache = d["address"] - B["sim_kmem_cache"].offset("next")
    name = d["what"].split()[1]
    assert len(r.warnings) == 1
    assert r.warnings[0].startswith("mdbpy: sim: cache list: ")
    assert r.warnings[0].endswith(f"(linked from cache {name} at 0x{cache:x}); the caches "
                                  "after it are lost")
    names = [c.name for c in r.sim.caches()]
    assert names[-1] == name and "node" not in names
    out = r.run("::slabinfo")
    assert out.splitlines()[-1].startswith(name)
    r.assert_truth_outside_risk()


def test_truncated_slab_count_loses_nothing(tmp_path):
    r = Run(first_seed("nr_slabs", lambda d, r: "node" in d["what"]), tmp_path)
    (d,) = r.damage
    assert d["objects"] == []
    why = f"cache node: nr_slabs says {d['new']}, its slab list has 3"
    assert r.warnings == [f"mdbpy: sim: {why}"]
    leaks, warnings = r.leaks()
    assert leaks == {x["address"] for x in r.truth["leaks"]}
    r.assert_truth_outside_risk()


def test_smashed_slab_descriptor_is_skipped(tmp_path):
    stmt = first_seed("slab_word", lambda d, r: "(cache)" in d["what"] and "node" in d["what"])
    r = Run(stmt, tmp_path)
    (d,) = r.damage
    slab = d["address"] - B["sim_slab"].offset("cache")
    assert r.warnings == [f"mdbpy: sim: cache node slab 0x{slab:x}: names cache "
                          f"0x{d['new']:x}; skipped"]
    assert [len(c.slabs) for c in r.sim.caches() if c.name == "node"] == [2]
    v = r.sim.cache_named("node").view
    base = min(d["objects"]) - v.red_left_pad
    assert r.leaks()[1] == [f"[{base:x}, {base + v.objects_per_slab * v.size:x}) not trusted: "
                            + r.warnings[0][len("mdbpy: sim: "):]]
    r.assert_truth_outside_risk()


@pytest.mark.parametrize("kind,bug", [("redzone", "Redzone overwritten"),
                                      ("padding", "Object padding overwritten")])
def test_slot_damage_is_reported_by_heap_verify(tmp_path, kind, bug):
    r = Run(f"damage 1 seed 5 {kind}\n", tmp_path)
    (d,) = r.damage
    (obj,) = d["objects"]
    assert r.warnings == []
    hits = [p for p in r.sim.verify() if p.addr == obj and p.kind == bug]
    assert len(hits) == 1 and hits[0].bad <= d["address"] < d["address"] + d["size"]
    r.assert_truth_outside_risk()


def test_many_damages_still_finish(tmp_path):
    r = Run("damage 12 seed 99\n", tmp_path)
    assert all(w.startswith("mdbpy: sim: ") for w in r.warnings)
    r.assert_truth_outside_risk()
    for cmd in ("::slabinfo", "::kmem_cache", "::walk sim_obj", "::heap_stats", "::heapmap"):
        r.run(cmd)
    assert "internal error" not in r.err.getvalue()


@pytest.mark.parametrize("line,message", [
    ("damage 0", "damage count 0 is out of range [1, 1000]"),
    ("damage 2 seed", "usage: damage COUNT [seed N] [KIND ...]"),
    ("damage 2 seed 1 bogus", "unknown damage kind 'bogus' (one of cache_word, cache_next, "
     "nr_slabs, slab_word, slab_next, freeptr, freelist_cycle, track, object, redzone, "
     "padding)"),
])
def test_bad_damage_statements(line, message):
    n = SCENARIO.count("\n") + 1
    with pytest.raises(ScenarioError) as e:
        build(SCENARIO + line + "\n")
    assert str(e.value) == f"scenario line {n}: {message}"


def test_nothing_to_damage_is_a_scenario_error():
    with pytest.raises(ScenarioError) as e:
        build("program empty\ndamage 1 freelist_cycle\n")
    assert str(e.value) == ("scenario line 2: nothing in this heap can take damage of kind "
                            "freelist_cycle")


def test_cache_list_cut_short(tmp_path):
    r = Run(first_seed("cache_next", lambda d, r: d["new"] == 0), tmp_path)
    (d,) = r.damage
    name = d["what"].split()[1]
    cache = d["address"] - B["sim_kmem_cache"].offset("next")
    n = [c.name for c in r.sim.caches()].index(name) + 1
    assert len(r.sim.caches()) == n
    assert r.warnings == [f"mdbpy: sim: cache list: ends after {n} caches, sim_allocator "
                          "claims 14"]
    assert r.leaks()[1] == [f"[{cache:x}, {cache + B['sim_kmem_cache'].size:x}) not trusted: "
                            f"cache list: ends after {n} caches, sim_allocator claims 14"]
    r.assert_truth_outside_risk()


def test_slab_claiming_another_slabs_memory(tmp_path):
    def overlaps(d, r):
        return "(base)" in d["what"] and "(node)" in d["what"] and not d["new"] % 4096 \
            and SLAB_BASE <= d["new"] < SLAB_BASE + (1 << 32)

    r = Run(first_seed("slab_word", overlaps), tmp_path)
    (d,) = r.damage
    slab = d["address"] - B["sim_slab"].offset("base")
    other = next(c for c in r.sim.caches() for s in c.slabs if s.base == d["new"])
    assert len(r.warnings) == 1 and r.warnings[0].startswith(
        f"mdbpy: sim: cache node slab 0x{slab:x}: ")
    # whichever is dropped, the other cache keeps its slab (its free list is its own)
    assert any(s.base == d["new"] for s in other.slabs)
    r.assert_truth_outside_risk()


def test_repeated_count_damage_does_not_run_out():
    """Found by the long fuzz run: five nr_slabs damages had cut every count to 0 and the
    fifth found no victim; a count already cut short is now made too large instead."""
    r = build(SCENARIO + "damage 5 seed 0 nr_slabs\n")
    assert [d["kind"] for d in r.truth["damage"]] == ["nr_slabs"] * 5
    assert all(d["new"] != d["old"] for d in r.truth["damage"])


def test_a_heap_without_slabs_takes_descriptor_damage():
    for seed in range(8):
        kinds = {d["kind"] for d in build(f"program p\ndamage 5 seed {seed}\n").truth["damage"]}
        assert kinds <= {"cache_word", "cache_next"}
