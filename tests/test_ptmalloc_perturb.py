"""glibc.malloc.perturb is checked only when it is known, never guessed from the heap: from
libc's symbols (perturb_byte), else from the tunables of the process's initial environment
(GLIBC_TUNABLES=glibc.malloc.perturb=N, or MALLOC_PERTURB_=N), read from the initial stack's
envp, live and in a core alike (mdbpy.target.environ). Unknown means not checked, said once.
"""

from __future__ import annotations

import struct

import pytest
from support import compile_fixture, gcore, start_fixture
from test_ptmalloc_heap import FLAGS, KINDS, MODES, _planted, opened, run

from mdbpy.target.base import Mapping
from mdbpy.target.environ import AT_RANDOM, initial_environ
from mdbpy.target.synthetic import SyntheticTarget
from mdbpy_commands.ptmalloc import tunables
from mdbpy_commands.ptmalloc.verify import PERTURB_UNKNOWN

T = b"GLIBC_TUNABLES="


@pytest.mark.parametrize("env,secure,want", [
    ([], False, 0),
    ([b"PATH=/bin"], False, 0),
    ([T + b"glibc.malloc.perturb=90"], False, 90),
    ([T + b"glibc.malloc.tcache_count=0:glibc.malloc.perturb=0x5a"], False, 0x5A),
    ([T + b"glibc.malloc.perturb=0132"], False, 0o132),  # octal, as C reads it
    ([b"MALLOC_PERTURB_=7"], False, 7),
    ([b"MALLOC_PERTURB_=7", T + b"glibc.malloc.perturb=9"], False, 9),  # the tunable wins
    ([T + b"glibc.malloc.perturb=9", b"MALLOC_PERTURB_=7"], False, 9),
    ([T + b"glibc.malloc.perturb=1:glibc.malloc.perturb=2"], False, 2),  # the last item
    ([b"MALLOC_PERTURB_=300"], False, 0),  # out of range: glibc ignores it
    ([b"MALLOC_PERTURB_=-1"], False, 0),
    ([T + b"glibc.malloc.perturb=300"], False, 0),
    ([T + b"glibc.malloc.perturb=90"], True, 0),  # AT_SECURE: ignored
    ([b"MALLOC_PERTURB_=90abc"], False, None),  # releases read it differently: unknown
    ([b"MALLOC_PERTURB_=08"], False, None),
    ([T + b"glibc.malloc.perturb=300", b"MALLOC_PERTURB_=7"], False, None),
    ([b"MALLOC_PERTURB_=7", b"MALLOC_PERTURB_=8"], False, None),
    (None, False, None),  # the environment is unreadable
])
def test_perturb_from_the_environment(env, secure, want):
    assert tunables.perturb_from_env(env, secure) == want


def _stack_target(envp: list[bytes], shift: int = 0) -> SyntheticTarget:
    """A synthetic initial stack laid out as execve makes it: argc, argv, NULL, envp, NULL,
    auxv (AT_RANDOM pointing at 16 bytes above it), strings; `shift` words of stale copies
    below the vector, as ld.so leaves when it shifts argv down."""
    base, size = 0x7FFF0000, 0x4000
    strings_at = base + 0x3000
    blob, ptrs = b"", []
    for s in [b"./prog"] + envp:
        ptrs.append(strings_at + len(blob))
        blob += s + b"\0"
    rnd = base + 0x2F00
    auxv = {6: 4096, AT_RANDOM: rnd, 31: ptrs[0]}
    words = [0] * shift + [1, ptrs[0], 0] + ptrs[1:] + [0]
    for k, v in auxv.items():
        words += [k, v]
    words += [0, 0]
    table = struct.pack(f"<{len(words)}Q", *words)
    data = bytearray(size)
    data[0x1000:0x1000 + len(table)] = table
    data[rnd - base:rnd - base + 16] = b"R" * 16
    data[0x3000:0x3000 + len(blob)] = blob
    return SyntheticTarget([(Mapping(base, base + size, "rw-p", path="[stack]"), bytes(data))],
                           auxv=auxv)


def test_initial_environment_from_the_stack():
    env = [b"A=1", T + b"glibc.malloc.perturb=90", b"EMPTY="]
    assert initial_environ(_stack_target(env)) == env
    assert initial_environ(_stack_target(env, shift=3)) == env
    assert initial_environ(_stack_target([])) == []
    assert initial_environ(SyntheticTarget([(0x1000, b"\0" * 64)])) is None  # no auxv


@pytest.fixture(scope="module")
def gh_exe(build_dir):
    return compile_fixture("glibc_heap", build_dir, flags=FLAGS)


@pytest.fixture(scope="module")
def corrupt_alias(gh_exe, build_dir):
    """glibc_heap's corrupt mode under the old alias MALLOC_PERTURB_ instead of the tunable."""
    import os

    env = dict(os.environ, MALLOC_PERTURB_="90")
    env.pop("GLIBC_TUNABLES", None)
    r = start_fixture(gh_exe, "corrupt", env=env)
    try:
        yield r, "", gcore(r.pid, build_dir / "glibc-corrupt-alias"), gh_exe
    finally:
        r.stop()


@pytest.fixture(scope="module")
def perturbed_leaks(gh_exe, build_dir):
    yield from _planted(gh_exe, build_dir, "leaks", "glibc.malloc.perturb=90")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_the_alias_gives_the_byte(corrupt_alias, kind, mode):
    """Without symbols the byte comes from the environment: the use-after-free write into a
    fastbin chunk is found under MALLOC_PERTURB_ as under the tunable."""
    r = corrupt_alias[0]
    with opened(corrupt_alias, kind, mode) as s:
        out = run(s, "::ptmalloc_verify").splitlines()
        assert f"chunk 0x{r.addr('uaf_fast'):x} in fastbin[1] (free) seems corrupted, at " \
               f"0x{r.addr('uaf_fast_at'):x}" in out
        assert len(out) == 3
        assert PERTURB_UNKNOWN not in s.err.getvalue()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_a_perturbed_healthy_heap_is_clean(perturbed_leaks, kind, mode):
    """Every free chunk holds the fill where glibc wrote it; a large chunk in the unsorted
    bin has its cleared nextsize links after fd/bk, which are not the fill."""
    with opened(perturbed_leaks, kind, mode) as s:
        assert run(s, "::ptmalloc_verify") == "ptmalloc: heap clean\n"
        assert s.err.getvalue() == ""


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_the_programs_own_data_is_not_a_fill(build_dir, kind, mode):
    exe = compile_fixture("ptmalloc_fill", build_dir, flags=FLAGS)
    r = start_fixture(exe)
    try:
        planted = (r, "", gcore(r.pid, build_dir / f"fill-{kind}-{mode}") if kind == "core"
                   else None, exe)
        with opened(planted, kind, mode) as s:
            assert f"fastbin[1] [3]: 0x{r.addr('text'):x} -> 0x{r.addr('filled'):x}" in \
                run(s, "::fastbins")
            assert run(s, "::ptmalloc_verify") == "ptmalloc: heap clean\n"
            assert s.err.getvalue() == ""
    finally:
        r.stop()


def test_unknown_is_said_once(corrupt_alias, monkeypatch):
    """No symbols and no readable environment: the fill is not checked, and one line says
    so however often verify runs."""
    monkeypatch.setattr(tunables, "initial_environ", lambda target: None)
    r = corrupt_alias[0]
    with opened(corrupt_alias, "core", "heuristic") as s:
        first = run(s, "::ptmalloc_verify").splitlines()
        assert len(first) == 2 and not any("seems corrupted" in x for x in first)
        assert run(s, "::ptmalloc_verify").splitlines() == first
        run(s, "::heap_verify -q")
        assert s.err.getvalue().splitlines().count(f"mdbpy: {PERTURB_UNKNOWN}") == 1
        assert f"chunk 0x{r.addr('uaf_tcache'):x}" in first[0]
