"""Every sim dcmd and walker, and the generic heap commands, on simulated heaps the simulator
damaged at random (mdbpy.sim.damage): each command ends with output or one-line errors and
warnings, never an internal error or a traceback, and never runs long (a watchdog fails the
example after WATCHDOG seconds).

CI runs EXAMPLES derandomized examples; MDBPY_FUZZ_EXAMPLES=N runs N with fresh random ones.
The long campaign, `MDBPY_FUZZ_EXAMPLES=2000 nice python -m pytest
tests/test_sim_damage_fuzz.py`, passed 2000 examples in 220 s; what it found (nr_slabs damage
running out of victims) is a test of its own in test_sim_damage.py.
"""

from __future__ import annotations

import io

from fuzz_support import assert_one_line_errors, fuzz_settings, watchdog
from hypothesis import given
from hypothesis import strategies as st
from test_sim_damage import SCENARIO

from mdbpy.lang.engine import Engine
from mdbpy.session import Session
from mdbpy.sim.build import build, write
from mdbpy.sim.damage import KINDS
from mdbpy.target.core import open_file_target

EXAMPLES = 40
WATCHDOG = 20  # seconds one command may take; the slowest takes well under one
COMMANDS = [
    "::slabinfo", "::kmem_cache", "::walk sim_cache | ::kmem_cache", "::walk sim_cache",
    "::walk sim_slab", "::walk sim_cache | ::walk sim_slab", "::walk sim_obj", "::walk sim_free",
    "::walk sim_cache | ::walk sim_obj", "::walk sim_cache | ::walk sim_free", "::walk node",
    "::walk kmalloc-64", "::findleaks", "::walk leak", "::heap_verify", "::heap_verify -q",
    "::heap_stats", "::heapmap",
]


def addresses(result) -> list[int]:
    """Where ::whatis and ::track look: each damaged byte, each object the damage put at risk
    (a few), a named object, and the allocator's root."""
    out = [result.names["n1"], result.names["lost"], result.globals["sim_allocator"]]
    for d in result.truth["damage"]:
        out += [d["address"], *d["objects"][:2]]
    return out


@fuzz_settings(EXAMPLES)
@given(seed=st.integers(0, (1 << 32) - 1), count=st.integers(1, 8),
       kinds=st.lists(st.sampled_from(KINDS), unique=True, max_size=4))
def test_damaged_heaps_never_crash(tmp_path_factory, seed, count, kinds):
    result = build(SCENARIO + f"damage {count} seed {seed} {' '.join(kinds)}\n")
    prog, core, _ = write(result, str(tmp_path_factory.mktemp("fuzz")))
    out, err = io.StringIO(), io.StringIO()
    session = Session(open_file_target(core, exe=prog), out=out, err=err)
    try:
        engine = Engine(session)
        cmds = COMMANDS + [f"{a:x}::{c}" for a in addresses(result) for c in ("whatis", "track")]
        for cmd in cmds:
            with watchdog(WATCHDOG):
                engine.run_string(cmd)
            assert_one_line_errors(err.getvalue())
            err.seek(0)
            err.truncate()
    finally:
        session.close()
