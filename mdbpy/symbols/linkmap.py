"""Which `struct link_map` the dynamic loader keeps for a load object: the address that ld.so's
own tables name the object by (its TLS slotinfo list, mdbpy/symbols/tls.py), found here
independently of them.

ld.so exports `_r_debug` (glibc's struct r_debug: int r_version; struct link_map *r_map; ...),
whose r_map heads the list of the base namespace's objects; from r_version 2 (glibc 2.35) it is
a struct r_debug_extended whose r_next links the r_debug of each further namespace (dlmopen).
Each link_map starts with the public members of <link.h>: l_addr (the load bias), l_name,
l_ld (the address of the object's dynamic section), l_next, l_prev; an object is the one whose
l_addr is its bias and l_ld the run-time address of its PT_DYNAMIC, which no two loaded objects
share. The private members (l_tls_modid among them) are at offsets that vary by release, and
are not read.
"""

from __future__ import annotations

from mdbpy.target import elfcore as ec

R_MAP, R_NEXT = 8, 40  # offsets in struct r_debug(_extended) of r_map and r_next
L_LD, L_NEXT = 16, 24  # offsets in struct link_map of l_ld and l_next
MAX_NAMESPACES = 16  # glibc's DL_NNS
MAX_LINK_MAPS = 1 << 16  # objects walked in one namespace before the list is taken as a loop
MASK = (1 << 64) - 1


def segment(obj, ptype: int) -> tuple[int, int, int] | None:
    """(p_vaddr, p_memsz, p_align) of obj's first program header of type ptype, from the
    headers read with the object (its file's, or its image's in the target), else from its
    file (elf_info_of); None when it has none or they cannot be read."""
    from mdbpy.symbols.elf import elf_info_of

    info = getattr(obj, "info", None)
    path = getattr(obj, "file", None)
    if info is None and path:
        try:
            info = elf_info_of(path)
        except OSError:
            return None
    p = next((p for p in info.phdrs if p.type == ptype), None) if info is not None else None
    return None if p is None else (p.vaddr, p.memsz, p.align)


def link_map_of(session, obj) -> int | None:
    """The address of the loader's link_map of obj, None when the loader's list (link_maps)
    has no entry with obj's bias and dynamic section, or obj has no PT_DYNAMIC."""
    dyn = segment(obj, ec.PT_DYNAMIC)
    if dyn is None:
        return None
    return link_maps(session).get((obj.bias, (dyn[0] + obj.bias) & MASK))


def link_maps(session) -> dict[tuple[int, int], int]:
    """{(l_addr, l_ld): link_map address} of every object in every namespace the loader's
    _r_debug lists, kept per session ({} without that symbol or where it cannot be read: the
    list read so far is kept)."""
    key = "linkmap.maps"
    if key not in session.cache:
        found: dict[tuple[int, int], int] = {}
        sym = session.symbols.lookup("_r_debug")
        if sym is not None:
            _walk_namespaces(session.mem, sym.addr, found)
        session.cache[key] = found
    return session.cache[key]


def _walk_namespaces(mem, r_debug: int, found: dict) -> None:
    """Adds the link maps of the namespace whose r_debug is at r_debug, and of those its
    r_next chain links (read only from r_version 2, where the member exists)."""
    from mdbpy.errors import ReadError

    try:
        for _ in range(MAX_NAMESPACES):
            if not r_debug:
                return
            _walk_list(mem, mem.read_int(r_debug + R_MAP, 8), found)
            if mem.read_int(r_debug, 4) < 2:
                return
            r_debug = mem.read_int(r_debug + R_NEXT, 8)
    except ReadError:
        return


def _walk_list(mem, lm: int, found: dict) -> None:
    """Adds each link_map of the list headed at lm, by its l_addr and l_ld."""
    seen = set()
    for _ in range(MAX_LINK_MAPS):
        if not lm or lm in seen:  # the end, or a damaged list that loops
            return
        seen.add(lm)
        found[(mem.read_int(lm, 8), mem.read_int(lm + L_LD, 8))] = lm
        lm = mem.read_int(lm + L_NEXT, 8)
