"""A process whose malloc is not glibc's (libumem through LD_PRELOAD, jemalloc, its own):
glibc's main_arena is never initialized, and mdbpy says glibc malloc is not in use instead of
reporting the untouched arena's zero bins as a damaged heap (a warning per bin)."""

from support import compile_fixture, run_mdbpy, start_fixture


def test_untouched_main_arena_is_not_a_heap(build_dir):
    exe = compile_fixture("own_malloc", build_dir)
    r = start_fixture(exe)
    try:
        pid = r.proc.pid
        res = run_mdbpy("-p", str(pid), "-e", "::findleaks")
        assert res.returncode == 1
        assert res.stdout == ""
        assert res.stderr == ("mdbpy: no allocator found in this target (mdbpy knows libumem, "
                              "glibc malloc, jemalloc and its own simulator; see ::dmods)\n")
        res = run_mdbpy("-p", str(pid), "-e", "::ptmalloc")
        assert res.returncode == 1
        assert res.stderr.startswith("mdbpy: ptmalloc: glibc's malloc is not in use in this "
                                     "process (main_arena 0x")
        assert res.stderr.endswith(" was never initialized: another allocator replaces it)\n")
        assert res.stderr.count("\n") == 1
    finally:
        r.proc.kill()
        r.proc.wait()
