"""Which function, lexical blocks and call sites of a DWARF file cover a pc.

A frame's variables are the parameters of the function whose code holds the frame's pc and the
variables of the lexical blocks of that function whose pc ranges also hold it (a block that
ended before the call is not in scope, as gdb's `bt full` shows). The compilation unit holding
a pc comes from .debug_aranges (else from the units' own ranges, the slow way, on files without
it); each unit's functions are listed once, sorted by address, so a stack of libc frames costs
one walk of each unit it touches, not of the whole file.

Call sites (DW_TAG_call_site, and DW_TAG_GNU_call_site of DWARF 4 with GNU extensions) say, at
a call's return address, what value the caller passed in each argument register: the only
trustworthy source of a DW_OP_entry_value.

A function inlined at a pc (DW_TAG_inlined_subroutine, inside the function or its blocks, and
inside one another) is a frame of its own, as gdb shows it: `inlined` lists them, and
`variables` of a function or of an inlined subroutine stops at the inlined subroutines it
holds, whose variables are theirs.
"""

from __future__ import annotations

import bisect

from mdbpy.types.dies import _attr, _dwarf_errors

SUBPROGRAM = "DW_TAG_subprogram"
BLOCK = "DW_TAG_lexical_block"
INLINED = "DW_TAG_inlined_subroutine"
CALL_SITES = ("DW_TAG_call_site", "DW_TAG_GNU_call_site")
CALL_PARAMS = ("DW_TAG_call_site_parameter", "DW_TAG_GNU_call_site_parameter")
NESTS = ("DW_TAG_namespace", "DW_TAG_module")  # scopes whose children may be functions


class Scopes:
    """The functions of one DwarfTypes (mdbpy/types/dies.py), by file address."""

    def __init__(self, dwarf_types):
        self.types = dwarf_types
        self.path = dwarf_types.path  # for _dwarf_errors' messages
        self._aranges = None
        self._units: dict[int, tuple[list[int], list[tuple[int, int, int]]]] = {}

    @property
    def dwarf(self):
        return self.types.dwarf

    # -- pc -> function -----------------------------------------------------------------------
    @_dwarf_errors
    def function_at(self, pc: int):
        """The DW_TAG_subprogram DIE whose code holds file address pc, or None."""
        cu = self._unit_at(pc)
        if cu is None:
            return None
        starts, funcs = self._functions(cu)
        i = bisect.bisect_right(starts, pc) - 1
        for lo, hi, off in reversed(funcs[max(0, i - 15):i + 1]):  # nested functions overlap
            if lo <= pc < hi:
                return cu.get_DIE_from_refaddr(off)
        return None

    def _unit_at(self, pc: int):
        if self._aranges is None:
            self._aranges = self.dwarf.get_aranges() or False
        if self._aranges:
            off = self._aranges.cu_offset_at_addr(pc) if self._aranges.entries else None
            if off is not None:
                return self.dwarf.get_CU_at(off)
        for cu in self.dwarf.iter_CUs():  # no aranges (or not for this pc): each unit's ranges
            if any(lo <= pc < hi for lo, hi in self.ranges(cu.get_top_DIE())):
                return cu
        return None

    def _functions(self, cu) -> tuple[list[int], list[tuple[int, int, int]]]:
        hit = self._units.get(cu.cu_offset)
        if hit is None:
            funcs = []
            todo = list(cu.get_top_DIE().iter_children())
            while todo:
                die = todo.pop()
                if die.tag == SUBPROGRAM:
                    funcs += [(lo, hi, die.offset) for lo, hi in self.ranges(die) if lo < hi]
                elif die.tag in NESTS or die.tag in ("DW_TAG_class_type", "DW_TAG_structure_type"):
                    todo += list(die.iter_children())
            funcs.sort()
            hit = self._units[cu.cu_offset] = ([f[0] for f in funcs], funcs)
        return hit

    # -- ranges ---------------------------------------------------------------------------------
    def ranges(self, die) -> list[tuple[int, int]]:
        """The [lo, hi) file-address ranges of a function, block or unit DIE."""
        lo = _attr(die, "DW_AT_low_pc")
        if "DW_AT_high_pc" in die.attributes and lo is not None:
            a = die.attributes["DW_AT_high_pc"]
            hi = a.value if a.form == "DW_FORM_addr" else lo + a.value
            return [(lo, hi)]
        a = die.attributes.get("DW_AT_ranges")
        if a is None or a.form not in ("DW_FORM_sec_offset", "DW_FORM_data4", "DW_FORM_data8"):
            return []  # DW_FORM_rnglistx (split DWARF) is not read
        lists = self.dwarf.range_lists()
        if lists is None:
            return []
        base = _attr(die.cu.get_top_DIE(), "DW_AT_low_pc") or 0
        out = []
        for e in lists.get_range_list_at_offset(a.value, cu=die.cu):
            if type(e).__name__ == "BaseAddressEntry":
                base = e.base_address
            elif e.is_absolute:
                out.append((e.begin_offset, e.end_offset))
            else:
                out.append((base + e.begin_offset, base + e.end_offset))
        return out

    def covers(self, die, pc: int) -> bool:
        return any(lo <= pc < hi for lo, hi in self.ranges(die))

    # -- what is in scope -------------------------------------------------------------------------
    @_dwarf_errors
    def variables(self, func, pc: int) -> tuple[list, list]:
        """(parameters in order, locals innermost block first) of a function at file pc:
        DW_TAG_formal_parameter and DW_TAG_variable DIEs of the function and of each nested
        lexical block whose ranges hold pc (declarations left out)."""
        params = [d for d in func.iter_children() if d.tag == "DW_TAG_formal_parameter"]
        levels = []
        scope = func
        while scope is not None:
            levels.append([d for d in scope.iter_children() if d.tag == "DW_TAG_variable"
                           and not _attr(d, "DW_AT_declaration")])
            scope = next((b for b in scope.iter_children()
                          if b.tag == BLOCK and self.covers(b, pc)), None)
        return params, [v for level in reversed(levels) for v in level]

    @_dwarf_errors
    def inlined(self, func, pc: int) -> list:
        """The DW_TAG_inlined_subroutine DIEs whose code holds file pc, outermost first: the
        functions inlined into func (through its lexical blocks) and into one another there,
        which gdb's bt shows as frames of their own."""
        out = []
        scope = func
        while scope is not None:
            scope = next((d for d in scope.iter_children()
                          if d.tag in (BLOCK, INLINED) and self.covers(d, pc)), None)
            if scope is not None and scope.tag == INLINED:
                out.append(scope)
        return out

    @_dwarf_errors
    def call_line(self, inlined) -> tuple[str, int] | None:
        """(file, line) of the call an inlined subroutine DIE stands for (its DW_AT_call_file
        and DW_AT_call_line, the file named as the line table names it), or None."""
        from mdbpy.symbols.lines import _file_name

        index, line = _attr(inlined, "DW_AT_call_file"), _attr(inlined, "DW_AT_call_line")
        if not isinstance(index, int) or not isinstance(line, int):
            return None
        prog = self.dwarf.line_program_for_CU(inlined.cu)
        if prog is None:
            return None
        comp_dir = _attr(inlined.cu.get_top_DIE(), "DW_AT_comp_dir")
        comp_dir = comp_dir.decode("utf-8", "replace") if isinstance(comp_dir, bytes) else ""
        return _file_name(prog, index, comp_dir), line

    @_dwarf_errors
    def call_site(self, func, return_pc: int):
        """The call site DIE of func whose return address is file address return_pc."""
        todo = list(func.iter_children())
        while todo:
            d = todo.pop()
            if d.tag in CALL_SITES:
                at = _attr(d, "DW_AT_call_return_pc")
                if at is None and d.tag == "DW_TAG_GNU_call_site":
                    at = _attr(d, "DW_AT_low_pc")
                if at == return_pc:
                    return d
            elif d.tag == BLOCK or d.tag == INLINED:
                todo += list(d.iter_children())
        return None


def call_value(site, regno: int):
    """The DW_AT_call_value expression bytes a call site gives for the argument passed in DWARF
    register regno, or None."""
    for p in site.iter_children():
        if p.tag not in CALL_PARAMS:
            continue
        loc = _attr(p, "DW_AT_location")
        if isinstance(loc, list) and len(loc) == 1 and loc[0] == 0x50 + regno and regno < 32:
            pass
        elif isinstance(loc, list) and loc[:1] == [0x90] and _uleb(loc[1:]) == regno:
            pass
        else:
            continue
        value = _attr(p, "DW_AT_call_value")
        if value is None:
            value = _attr(p, "DW_AT_GNU_call_site_value")
        return value
    return None


def _uleb(data: list[int]) -> int | None:
    result = shift = 0
    for b in data:
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return result
    return None


def origin(die):
    """The DIE a concrete instance stands for (DW_AT_abstract_origin, DW_AT_specification),
    followed to its end: where an out-of-line copy of an inlined function keeps its names."""
    for _ in range(4):
        ref = next((a for a in ("DW_AT_abstract_origin", "DW_AT_specification")
                    if a in die.attributes), None)
        if ref is None:
            break
        die = die.get_DIE_from_attribute(ref)
    return die


def name_of(die) -> str | None:
    """A DIE's DW_AT_name, through its abstract origin."""
    v = _attr(origin(die), "DW_AT_name")
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else None


def _same(a, b) -> bool:
    """Whether two DIEs are one: the same offset in the same section of the same file (a
    supplementary file's, or .debug_types', offsets overlap .debug_info's)."""
    return a.offset == b.offset and a.dwarfinfo is b.dwarfinfo and \
        hasattr(a.cu, "tu_offset") == hasattr(b.cu, "tu_offset")


def calls(site, callee, same_file: bool = True) -> bool:
    """Whether a call site calls the function `callee` (a subprogram DIE): its DW_AT_call_origin
    (DW_AT_abstract_origin on a GNU call site) is that function, its origin, or a declaration
    of the same name (the only test across files, whose DIE offsets are unrelated). A site
    without one (an indirect call) is not trusted."""
    attr = "DW_AT_call_origin" if "DW_AT_call_origin" in site.attributes else \
        "DW_AT_abstract_origin"
    if attr not in site.attributes:
        return False
    target = site.get_DIE_from_attribute(attr)
    if same_file and (_same(target, callee) or _same(target, origin(callee))
                      or _same(origin(target), origin(callee))):
        return True
    linkage = ("DW_AT_linkage_name", "DW_AT_MIPS_linkage_name", "DW_AT_name")
    ours = next((v for a in linkage if (v := _attr(origin(callee), a)) is not None), None)
    theirs = next((v for a in linkage if (v := _attr(origin(target), a)) is not None), None)
    return bool(_attr(origin(target), "DW_AT_declaration")) and ours is not None \
        and ours == theirs
