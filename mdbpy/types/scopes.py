"""Which function, lexical blocks and call sites of a DWARF file cover a pc.

A frame's variables are the parameters of the function whose code holds the frame's pc and the
variables of the lexical blocks of that function whose pc ranges also hold it (a block that
ended before the call is not in scope, as gdb's `bt full` shows). The compilation unit holding
a pc comes from .debug_aranges (else from the units' own ranges, the slow way, on files without
it); each unit's functions are listed once, sorted by address, so a stack of libc frames costs
one walk of each unit it touches, not of the whole file.

Call sites (DW_TAG_call_site, and DW_TAG_GNU_call_site of DWARF 4 with GNU extensions) say, at
a call's return address, what value the caller passed in each argument register: the only
trustworthy source of a DW_OP_entry_value. Those marked as tail calls (a jump to the callee)
are what tail-call frames are rebuilt from (mdbpy/types/frames.py).

A function inlined at a pc (DW_TAG_inlined_subroutine, inside the function or its blocks, and
inside one another) is a frame of its own, as gdb shows it: `inlined` lists them, and
`variables` of a function or of an inlined subroutine stops at the inlined subroutines it
holds, whose variables are theirs.
"""

from __future__ import annotations

import bisect

from mdbpy.types.dies import _attr, _dwarf_errors
from mdbpy.types.locations import Unavailable, lone_register, parse

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
                if site_return_pc(d) == return_pc:
                    return d
            elif d.tag == BLOCK or d.tag == INLINED:
                todo += list(d.iter_children())
        return None

    @_dwarf_errors
    def call_target(self, site):
        """What a call site calls, as gdb reads it, from the first of DW_AT_call_target,
        DW_AT_GNU_call_site_target, DW_AT_call_origin, DW_AT_abstract_origin it has: ('expr',
        the target address expression's bytes), ('name', a declaration's linkage name, else its
        name: a symbol to look up), ('starts', the file addresses where a definition's ranges
        start: its entry first, unless its DW_AT_ranges list another first); None when it has
        none of them, an empty expression, or a definition without code (an abstract instance)."""
        names = ("DW_AT_call_target", "DW_AT_GNU_call_site_target", "DW_AT_call_origin",
                 "DW_AT_abstract_origin")
        name = next((a for a in names if a in site.attributes), None)
        if name is None:
            return None
        a = site.attributes[name]
        if a.form == "DW_FORM_exprloc" or a.form.startswith("DW_FORM_block"):
            return ("expr", a.value) if a.value else None
        target = site.get_DIE_from_attribute(name)
        if _attr(target, "DW_AT_declaration") and "DW_AT_specification" not in target.attributes:
            linkage = ("DW_AT_linkage_name", "DW_AT_MIPS_linkage_name", "DW_AT_name")
            v = next((v for n in linkage if isinstance(v := _attr(target, n), bytes)), None)
            return ("name", v.decode("utf-8", "replace")) if v else None
        ranges = self.ranges(target)
        if not ranges:
            return None
        starts = ranges if "DW_AT_ranges" in target.attributes else ranges[:1]
        return "starts", [lo for lo, _ in starts]

    @_dwarf_errors
    def call_parameter(self, site, kind: str, arg: int):
        """The DW_TAG_call_site_parameter DIE of a call site that gdb matches with an entry
        value (dwarf_expr_reg_to_entry_parameter): the first one with a DW_AT_call_value whose
        DW_AT_location is DWARF register `arg` (kind 'reg') or the stack slot DW_OP_breg7
        `arg` (kind 'fb', a DW_OP_fbreg argument), or, without a location, whose
        DW_AT_call_parameter is the DIE at unit offset `arg` (kind 'param',
        DW_OP_GNU_parameter_ref); None if none."""
        for p in site.iter_children():
            if p.tag not in CALL_PARAMS or call_expr(p, "value") is None:
                continue  # gdb keeps no parameter without a value
            loc = _attr(p, "DW_AT_location")
            if loc is None:
                ref = next((a for a in ("DW_AT_call_parameter", "DW_AT_abstract_origin")
                            if a in p.attributes), None)
                if kind == "param" and ref is not None and \
                        p.get_DIE_from_attribute(ref).offset - p.cu.cu_offset == arg:
                    return p
            elif isinstance(loc, list) and (kind, arg) == _slot(p, loc):
                return p
        return None

    @_dwarf_errors
    def tail_call_sites(self, func) -> list:
        """The call sites of a function that are tail calls (DW_AT_call_tail_call,
        DW_AT_GNU_tail_call), in its lexical blocks and inlined code too, in gdb's order (the
        last first); none unless the function says its list of calls is complete
        (DW_AT_call_all_calls and the like), as gdb reads them: only then can it be a step of
        a tail-call chain."""
        complete = ("DW_AT_call_all_calls", "DW_AT_GNU_all_call_sites",
                    "DW_AT_call_all_tail_calls", "DW_AT_GNU_all_tail_call_sites")
        if not any(_attr(d, a) for d in (func, origin(func)) for a in complete):
            return []
        out = []
        todo = list(reversed(list(func.iter_children())))
        while todo:
            d = todo.pop()
            if d.tag in CALL_SITES and (_attr(d, "DW_AT_call_tail_call")
                                        or _attr(d, "DW_AT_GNU_tail_call")):
                out.append(d)
            elif d.tag == BLOCK or d.tag == INLINED:
                todo += reversed(list(d.iter_children()))
        return out[::-1]


def call_expr(param, which: str):
    """A call site parameter's DW_AT_call_value (which 'value') or DW_AT_call_data_value
    ('data', the value its pointer pointed at) expression bytes, or None."""
    names = {"value": ("DW_AT_call_value", "DW_AT_GNU_call_site_value"),
             "data": ("DW_AT_call_data_value", "DW_AT_GNU_call_site_data_value")}[which]
    v = next((v for a in names if (v := _attr(param, a)) is not None), None)
    return v if isinstance(v, list) else None


def _slot(param, loc: list[int]) -> tuple[str, int] | None:
    """('reg', n) for a lone DW_OP_regN or DW_OP_regx n, ('fb', off) for a lone DW_OP_breg7
    (the stack pointer) off: the argument slots a call site parameter names (gdb's)."""
    try:
        ops = parse(param, loc)
    except Unavailable:  # a malformed location: no slot
        return None
    n = lone_register(ops)
    if n is not None:
        return "reg", n
    if len(ops) == 1 and ops[0].op_name == "DW_OP_breg7":
        return "fb", ops[0].args[0]
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


def site_return_pc(site):
    """A call site's return address in its file (DW_AT_call_return_pc; DW_AT_low_pc on a GNU
    call site), None when it has none (gdb then ignores the site)."""
    at = _attr(site, "DW_AT_call_return_pc")
    if at is None and site.tag == "DW_TAG_GNU_call_site":
        at = _attr(site, "DW_AT_low_pc")
    return at
