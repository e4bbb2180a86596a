#!/usr/bin/env python3
"""Types from DWARF that dwz has rewritten: the first index of a file with a supplementary file
against the same file before dwz.

The subject is a large -g library and a second file sharing its DWARF, as a Debian source
package's binaries share theirs: jemalloc built with -g (.ci/build-jemalloc: its
libjemalloc.so.2, and a program linking its libjemalloc_pic.a), copied to a temporary directory
and run through `dwz -m common.debug lib prog`. Measured, each in-process, median of several
runs, from opening the file to the index built (scan.py: reading the sections, the scan, and
with dwz the common file's sections and the partial units the library imports):

  1. the library as built (no dwz);
  2. the same library after dwz, with its common file;

and the same through DwarfTypes (mdbpy/types/dies.py: the first index as a session builds it,
finding the common file by its link and checking its build-id; no cache); and the names
found, which must be the same. Any other pair can be given:
python bench/types_dwz_bench.py [runs] [LIB OTHER]. Needs dwz and gcc.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JEMALLOC = Path(__file__).resolve().parents[1] / ".ci" / "jemalloc" / "lib"


def index_time(path: Path, sup: Path | None, runs: int):
    from elftools.elf.elffile import ELFFile

    from mdbpy.types.index import read_sections
    from mdbpy.types.scan import scan

    times, found = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            sec = read_sections(ELFFile(f))
            if sup is None:
                found = scan(sec)
            else:
                with open(sup, "rb") as g:
                    found = scan(sec, read_sections(ELFFile(g)))
        times.append(time.perf_counter() - t0)
    names = {k: set(v) for k, v in found.types.items()}
    names["vars"] = set(found.vars)
    return statistics.median(times), names, len(found.cus)


def open_time(path: Path, runs: int) -> float:
    from mdbpy.types.dies import DwarfTypes

    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        d = DwarfTypes(str(path), None)  # no build-id: nothing cached, the index is built
        times.append(time.perf_counter() - t0)
        assert d.missing_sup is None
    return statistics.median(times)


def subjects(tmp: Path, argv: list[str]) -> tuple[Path, Path]:
    if len(argv) == 2:
        return Path(shutil.copy(argv[0], tmp / "lib")), Path(shutil.copy(argv[1], tmp / "other"))
    lib, archive = JEMALLOC / "libjemalloc.so.2", JEMALLOC / "libjemalloc_pic.a"
    if not lib.is_file() or not archive.is_file():
        raise SystemExit("no -g jemalloc under .ci/jemalloc (run .ci/build-jemalloc), "
                         "or give LIB OTHER")
    (tmp / "main.c").write_text("int main(void) { return 0; }\n")
    other = tmp / "other"
    subprocess.run(["gcc", "-g", "-o", str(other), str(tmp / "main.c"), "-Wl,--whole-archive",
                    str(archive), "-Wl,--no-whole-archive", "-lpthread", "-lm", "-ldl"],
                   check=True, capture_output=True)
    return Path(shutil.copy(lib, tmp / "lib")), other


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        lib, other = subjects(tmp, sys.argv[2:])
        plain = Path(shutil.copy(lib, tmp / "lib.plain"))
        subprocess.run(["dwz", "-m", "common.debug", lib.name, other.name], cwd=tmp,
                       check=True, capture_output=True)
        sup = tmp / "common.debug"
        before, names_before, units_before = index_time(plain, None, runs)
        after, names_after, units_after = index_time(lib, sup, runs)
        size = {p.name: p.stat().st_size for p in (plain, lib, sup)}
        print(f"before dwz: {before:.3f} s ({size['lib.plain']} bytes, {units_before} units)")
        print(f"after dwz:  {after:.3f} s ({size['lib']} bytes + common.debug "
              f"{size['common.debug']} bytes, {units_after} units read)")
        print(f"ratio: {after / before:.2f}")
        o_before, o_after = open_time(plain, runs), open_time(lib, runs)
        print(f"DwarfTypes, first index: {o_before:.3f} s before dwz, {o_after:.3f} s after "
              f"(ratio {o_after / o_before:.2f})")
        same = names_before == names_after
        print(f"names: {sum(map(len, names_before.values()))} before, "
              f"{sum(map(len, names_after.values()))} after, "
              f"{'the same' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
