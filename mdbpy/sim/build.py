"""Scenario -> simulated process -> (in memory) a SyntheticTarget with its symbols and truth,
and (on disk) the program's ELF file, an ELF core, and the truth as JSON.

    result = build(open("demo.scn").read())
    session.symbols.add_symbols(result.program, result.symbols, is_exe=True)   # in process
    prog, core, truth = write(result, "/tmp/demo")   # then: mdbpy PROG CORE
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from mdbpy.sim import truth as T
from mdbpy.sim.elfwrite import Image
from mdbpy.sim.run import Simulation, plan
from mdbpy.sim.scenario import parse
from mdbpy.symbols.base import Symbol
from mdbpy.target import elfcore as ec
from mdbpy.target.base import Mapping, Target, Thread
from mdbpy.target.synthetic import SyntheticTarget

AT_PHNUM, AT_PAGESZ, AT_ENTRY = 5, 6, 9


@dataclass
class SimResult:
    """A built scenario: the process as a target, the program's symbols, the ground truth."""

    program: str
    target: SyntheticTarget
    symbols: list[Symbol]  # runtime addresses, for session.symbols.add_symbols
    truth: dict
    image: Image  # the program's ELF file
    text: Mapping  # the mapping of the ELF file (anonymous in `target`, a file once written)
    names: dict[str, int]  # each object name's (last) object address
    globals: dict[str, int]  # each global's address (sim_allocator included)

    def add_symbols(self, session) -> None:
        """Give an in-process Session over `target` the program's symbols."""
        session.symbols.add_symbols("a.out", self.symbols, is_exe=True)


def build(text: str) -> SimResult:
    """Run a scenario (see mdbpy.sim.scenario); ScenarioError names the first bad line."""
    stmts = parse(text)
    sim = Simulation(plan(stmts))
    sim.run(stmts)
    sim.finish()
    return result_of(sim, scenario_truth(sim))


def result_of(sim: Simulation, truth: dict) -> SimResult:
    regions = [sim.text, sim.data, sim.meta, sim.slab_area,
               *(t.stack for t in sim.threads.values())]
    segments = [(Mapping(r.start, r.end, r.perms, path=r.name), r.data) for r in regions
                if r.data]
    threads = [Thread(t.tid, t.name, _full_regs(t.regs(sim.code))) for t in
               sim.threads.values()]
    entry = sim.code.addr["_start"]
    auxv = {ec.AT_PHDR: sim.text.start + ec.EHDR.size, AT_PHNUM: 4, AT_PAGESZ: ec.PAGE,
            AT_ENTRY: entry}
    target = SyntheticTarget(segments, threads, auxv, name=f"simulated {sim.name}")
    target.pid = sim.pid
    symbols = [Symbol(s.name, s.addr, s.size, s.kind, "global", "a.out", value=s.addr)
               for s in sim.symbols]
    text = Mapping(sim.text.start, sim.text.end, sim.text.perms)
    return SimResult(sim.name, target, symbols, truth, sim.image, text, dict(sim.handles),
                     dict(sim.global_addr))


def _full_regs(regs: dict[str, int]) -> dict[str, int]:
    from mdbpy.target.base import X86_64_REGS

    return {r: regs.get(r, 0) for r in X86_64_REGS}


def roots(sim: Simulation) -> list[tuple]:
    """The scan roots: the data segment, and each thread's stack from its stack pointer."""
    out = [(sim.data.data, sim.data.start, sim.data.start, sim.data.end)]
    for t in sim.threads.values():
        out.append((t.stack.data, t.stack.start, t.top.rsp, t.stack.end))
    return out


def scenario_truth(sim: Simulation) -> dict:
    """Leaks, corruption and per-cache counts of a scenario run, with what the simulator
    knows about each object (its name, its stacks, the writer of a damaged byte), and the
    random damage applied to it (mdbpy.sim.damage) with the objects each one puts at risk."""
    leaks = []
    for a in T.unreachable(sim.slub, roots(sim)):
        info = sim.objects[a]
        leaks.append({"address": a, "cache": info.cache, "size": info.size,
                      "name": info.name, "thread": info.thread,
                      "alloc_stack": info.alloc_stack})
    corrupt = []
    for c in T.corruption(sim.slub):
        info = sim.objects.get(c.obj)
        writer = next((stack for lo, hi, stack in reversed(sim.writes)
                       if lo <= c.first_bad < hi), None)
        corrupt.append({"address": c.obj, "cache": c.cache, "kind": c.kind,
                        "first_bad": c.first_bad, "allocated": c.allocated,
                        "name": info.name if info else None,
                        "alloc_stack": info.alloc_stack if info else None,
                        "free_stack": info.free_stack if info else None,
                        "write_stack": writer})
    for d in sim.double_frees:
        corrupt.append({"kind": "double free", "first_bad": d["address"], "allocated": False,
                        "write_stack": None, **d})
    counts = T.cache_counts(sim.slub)
    for name, c in counts.items():
        c["leaked"] = sum(1 for x in leaks if x["cache"] == name)
        c["corrupt"] = len({x["address"] for x in corrupt if x["cache"] == name})
    data = sim.data
    return {"program": sim.name, "pid": sim.pid, "leaks": leaks, "corrupt": corrupt,
            "caches": counts, "damage": [d.as_dict() for d in sim.damage],
            "roots": {"data": [data.start, data.end],
                      "stacks": {t.name: [t.top.rsp, t.stack.end]
                                 for t in sim.threads.values()}}}


class _Written(Target):
    """The built target as the core records it: the text mapping is the program's file."""

    kind = "synthetic"

    def __init__(self, inner: SyntheticTarget, text: Mapping, path: str, program: str):
        self.inner = inner
        self.text = replace(text, path=path)
        self.pid = inner.pid
        self.psinfo = ec.PsInfo(inner.pid or 0, program[:15], path[:80], 1, "S")

    def mappings(self):
        return [self.text if m.start == self.text.start else m for m in self.inner.mappings()]

    def read(self, addr: int, size: int) -> bytes:
        return self.inner.read(addr, size)

    def threads(self):
        return self.inner.threads()

    def auxv(self):
        return self.inner.auxv()

    def exe_path(self):
        return self.text.path


def write(result: SimResult, directory: str) -> tuple[str, str, str]:
    """Write PROG (the ELF file), PROG.core and PROG.truth.json into directory (created if
    needed); returns their paths. The core's text mapping names PROG by its absolute path."""
    from mdbpy.target.gcore import write_core

    os.makedirs(directory, exist_ok=True)
    prog = os.path.abspath(os.path.join(directory, result.program))
    core, truth = prog + ".core", prog + ".truth.json"
    tmp = prog + ".tmp"
    with open(tmp, "wb") as f:
        f.write(result.image.data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, prog)
    write_core(_Written(result.target, result.text, prog, result.program), core)
    with open(truth, "w") as f:
        f.write(T.to_json(result.truth))
    return prog, core, truth
