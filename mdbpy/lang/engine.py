"""The engine: runs mdb statements against a Session (mdb.c's mdb_run / mdb_call).

Input is read a line at a time and each statement runs as soon as its terminator is read, so a
macro file, `-e` string or batch stdin behaves like typed input. Pipelines run in-process: a
stage that is not last writes into a PipeCapture, each captured line is parsed as an
expression, and the next stage runs once per value (or once with the whole list for pipe_all
dcmds). Errors are reported as `mdbpy: <message>` on the session's error stream and the session
goes on; only QuitSession and KeyboardInterrupt leave the engine.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

from mdbpy.dcmd import ADDRSPEC, LOOP, LOOPFIRST, PIPE, PIPE_OUT, Dcmd, Invocation
from mdbpy.errors import CommandAbort, MdbError, ParseError, QuitSession, UsageError
from mdbpy.lang.expr import MASK64, Evaluator, dot_incr, parse_expression
from mdbpy.lang.lexer import skip_to_terminator
from mdbpy.lang.parser import Stage, Statement, parse_statement

OK, ERR, ABORT = 0, 1, 2  # a dcmd call's outcome: mdb's DCMD_OK, DCMD_ERR, DCMD_ABORT/USAGE
STRING, FILE = "string", "file"  # how bare expressions behave (see Engine._bare)
MAX_FRAMES = 32  # nesting of macro files (`$<<`, and `$<` chains) and ::eval strings
TOO_DEEP = f"input nested too deeply (more than {MAX_FRAMES} levels)"
MAX_LINE = 1 << 20  # longest input line read at once
BUILTIN_VARS = ("0", "1", "2", "9", "b", "d", "e", "m", "t", "hits")


@dataclass
class Command:
    """A stage ready to run: the dcmd resolved and `$[...]` arguments evaluated. The previous
    pipeline is kept in this form, so repeating it does not re-evaluate its arguments."""

    stage: Stage
    dcmd: Dcmd | None
    args: list

    @property
    def shown(self) -> str:
        name = self.stage.name
        return name if name[0] in "$:>" or self.dcmd is None else "::" + name


@dataclass
class _Item:
    """One address in a pipe, with the walk variables (name, value) that travel with it."""

    addr: int
    assigns: tuple = ()


class PipeCapture:
    """The write side of an in-process pipe.

    Dcmds write text to it like any stream. A walk with a variable calls bind_var(name): every
    address that flows out of this stage then carries name=address down the pipeline (mdb's
    VCBs). The engine calls begin() before each invocation so lines remember which input
    element's variables they inherit.
    """

    def __init__(self):
        self._segments: list[tuple[tuple, io.StringIO]] = [((), io.StringIO())]
        self.bound: list[str] = []

    def write(self, s: str) -> int:
        return self._segments[-1][1].write(s)

    def flush(self) -> None:
        """Nothing to flush: the reader runs after the writer finishes."""

    def isatty(self) -> bool:
        return False

    def begin(self, assigns: tuple) -> None:
        if assigns != self._segments[-1][0]:
            self._segments.append((assigns, io.StringIO()))

    def bind_var(self, name: str) -> None:
        if name not in self.bound:
            self.bound.append(name)

    def segments(self):
        for assigns, buf in self._segments:
            yield assigns, buf.getvalue()


@dataclass
class _Frame:
    """One input source being read: the top level, a macro file, or an ::eval string."""

    stream: object
    name: str
    mode: str
    owned: bool = False  # close the stream when done
    lineno: int = 0
    status: int = 0  # of the last command that ran in this frame
    replacement: object = None  # `$<` inside a macro: read this stream next
    aborted: bool = False  # `$<` with no file name: stop reading this frame
    replaced: int = 0  # macros `$<` has read in place of this frame's: they count as nesting


class Engine:
    def __init__(self, session):
        self.session = session
        session.evaluate = self.eval_string
        session.engine = self
        self.evaluator = Evaluator(session)
        self.last: list[Command] = []  # the previous pipeline, for bare expressions and `,cnt`
        self.frames: list[_Frame] = []
        for name in BUILTIN_VARS:
            session.vars.setdefault(name, 0)

    # -- the API the CLI, the REPL and dcmds use --------------------------------------------
    def run_string(self, text: str) -> int:
        """`-e` semantics: the string is the only input; a bare expression only sets dot.
        Returns 1 if the last command failed, else 0."""
        return self._run_frame(_Frame(io.StringIO(text), "<string>", STRING))

    def run_stream(self, stream) -> int:
        """Batch input (a file, non-terminal stdin): read line by line, run each command when
        its terminator is read, report errors and go on. Returns 1 if the last command
        failed, else 0."""
        return self._run_frame(_Frame(stream, getattr(stream, "name", "<stdin>"), FILE))

    def run_line(self, line: str) -> int:
        """One interactive line: a bare expression reruns the previous command at that
        address; an empty line repeats it when option repeatlast is set."""
        if not line.endswith("\n"):
            line += "\n"
        return self._run_frame(_Frame(io.StringIO(line), "<stdin>", FILE))

    def eval_string(self, text: str, dot: int | None = None) -> int:
        """Run text as mdb input (::eval, ::map, ::grep); dot starts at `dot` and its final
        value carries back to the caller. Returns 0, or 1 if the last command failed."""
        if dot is not None:
            self.session.dot = dot & MASK64
        return self._run_frame(_Frame(io.StringIO(text), "<string>", STRING))

    def eval_expr(self, text: str) -> int:
        """The value of one expression (no statement syntax)."""
        return self.evaluator.eval(parse_expression(text, self.session.radix))

    def run_macro(self, name: str | None, replace: bool, flags: int,
                  addr: int | None = None) -> int:
        """`$<< name` (replace False) or `$< name`. `$<` replaces the macro being read, except
        at the top level and in pipes, where it sources like `$<<`; `$<` with no name stops
        the macro being read. A name found in no file on the macro path may be a loaded
        module's macro alias, run with the address given to `$<`. Returns the status of the
        macro's last command."""
        depth = len(self.frames)
        if name is None:
            if depth > 1:
                self.frames[-1].aborted = True
            else:
                self.session.warn("input stack is empty")
            return OK
        if flags & PIPE_OUT:
            raise CommandAbort("macro files cannot be used as input to a pipeline")
        path = self._find_macro(name)
        if path is None:
            alias = self.session.registry.macro_alias(name)
            if alias is None:
                raise CommandAbort(f"failed to open {name} (see ::help '$<')")
            return self.eval_string(alias if addr is None else f"{addr:#x}{alias}")
        chained = replace and depth > 1 and not flags & PIPE
        if chained and depth + self.frames[-1].replaced >= MAX_FRAMES:
            raise CommandAbort(TOO_DEEP)  # a macro that replaces itself would never end
        try:
            stream = open(path, "rb")
        except OSError as e:
            raise CommandAbort(f"failed to open {name}: {e.strerror}") from None
        if chained:
            self.frames[-1].replacement = stream
            self.frames[-1].replaced += 1
            return OK
        return self._run_frame(_Frame(stream, name, FILE, owned=True))

    def _find_macro(self, name: str) -> str | None:
        if os.sep in name:
            candidates = [name]
        else:
            candidates = [os.path.join(d or ".", name) for d in self.session.macro_path]
        return next((path for path in candidates if os.path.isfile(path)), None)

    # -- reading input ----------------------------------------------------------------------
    def _run_frame(self, frame: _Frame) -> int:
        if len(self.frames) >= MAX_FRAMES:
            if frame.owned:
                frame.stream.close()
            raise CommandAbort(TOO_DEEP)
        self.frames.append(frame)
        try:
            while not frame.aborted:
                line = self._read_line(frame)
                if line is None:
                    break
                self._run_text(line, frame)
                # a program driving mdbpy through a pipe sees each command's output at once
                self.session.out.flush()
                if frame.replacement is not None:
                    if frame.owned:
                        frame.stream.close()
                    frame.stream, frame.replacement = frame.replacement, None
                    frame.owned, frame.lineno = True, 0
            return frame.status
        finally:
            self.frames.pop()
            if frame.owned:
                frame.stream.close()
            if frame.replacement is not None:
                frame.replacement.close()

    def _read_line(self, frame: _Frame) -> str | None:
        """The next line of the frame's stream (bytes or text), as text: an overlong line or
        one that is not UTF-8 is reported, naming the line, and read as empty."""
        line = frame.stream.readline(MAX_LINE)
        if not line:
            return None
        frame.lineno += 1
        nl = b"\n" if isinstance(line, bytes) else "\n"
        if len(line) >= MAX_LINE and not line.endswith(nl):
            while True:  # discard the rest of the overlong line, in bounded pieces
                more = frame.stream.readline(MAX_LINE)
                if not more or more.endswith(nl):
                    break
            self.session.warn(f"line {frame.lineno} of {frame.name} is too long; ignored")
            frame.status = 1
            return ""
        try:
            return as_text(line)
        except MdbError as e:
            self.session.warn(f"line {frame.lineno} of {frame.name} is {e}; ignored")
            frame.status = 1
            return ""

    def _run_text(self, text: str, frame: _Frame) -> None:
        pos = 0
        while pos < len(text):
            try:
                st, pos = parse_statement(text, pos, self.session.radix)
            except ParseError as e:
                self._syntax_error(e, frame)
                frame.status = 1
                pos = skip_to_terminator(text, getattr(e, "pos", pos))
                continue
            try:
                status = self._execute(st, frame)
            except MdbError as e:
                if str(e):
                    self.session.warn(str(e))
                status = ERR
            if status is not None:
                frame.status = 1 if status else 0
            if frame.replacement is not None or frame.aborted:
                return

    def _syntax_error(self, e: ParseError, frame: _Frame) -> None:
        if frame.mode == FILE and frame.name != "<stdin>" and hasattr(e, "what"):
            where = f'near "{e.near}"' if e.near else "at end of command"
            self.session.warn(f"{e.what} on line {frame.lineno} of {frame.name} {where}")
        else:
            self.session.warn(str(e))

    # -- statements -------------------------------------------------------------------------
    def _execute(self, st: Statement, frame: _Frame) -> int | None:
        """Run one statement; the status, or None when nothing ran (status unchanged)."""
        s = self.session
        if st.is_empty:
            if frame.mode == FILE and s.options.get("repeatlast") and self.last:
                return self._run_pipeline(self.last, dot_incr(s, "\\n"), 1, 0, None)
            return None
        if not st.stages and st.addr is None and st.count is None:
            return self._shell(st.shell, None)
        addr = self.evaluator.eval(st.addr) if st.addr is not None else None
        count = self.evaluator.eval(st.count) if st.count is not None else None
        if st.stages:
            cmds = [self._bind(stage) for stage in st.stages]
            self.last = cmds
            flags = (ADDRSPEC if addr is not None else 0) | (LOOP if count is not None else 0)
            return self._run_pipeline(cmds, s.dot if addr is None else addr,
                                      1 if count is None else count, flags, st.shell)
        return self._bare(addr, count, st.shell, frame)

    def _bare(self, addr: int | None, count: int | None, shell: str | None,
              frame: _Frame) -> int | None:
        """A bare `expr`, `expr,cnt` or `,cnt`: in string input `expr` only sets dot;
        otherwise each reruns the previous pipeline (adb compatibility)."""
        s = self.session
        if count is None:
            s.dot = addr
            if frame.mode == STRING:
                s.incr = 0
                return None
            return self._run_pipeline(self.last, addr, 1, ADDRSPEC, shell) if self.last else None
        if addr is None:
            start, flags = dot_incr(s, ","), LOOP
        else:
            start, flags = addr, ADDRSPEC | LOOP
        if not self.last:
            s.dot = start
            return None
        return self._run_pipeline(self.last, start, count, flags, shell)

    def _bind(self, stage: Stage) -> Command:
        args = [self.evaluator.eval(a) if not isinstance(a, str) else a for a in stage.args]
        dcmd = None if stage.is_format else self.session.find_dcmd(stage.name)
        return Command(stage, dcmd, args)

    # -- pipelines --------------------------------------------------------------------------
    def _run_pipeline(self, cmds: list[Command], addr: int, count: int, flags: int,
                      shell: str | None) -> int:
        final_out = io.StringIO() if shell is not None else self.session.out
        status = OK
        items: list[_Item] = []
        for i, cmd in enumerate(cmds):
            last = i == len(cmds) - 1
            out = final_out if last else PipeCapture()
            pipe_out = 0 if last else PIPE_OUT
            if i == 0:
                status = self._loop(cmd, addr, count, flags | pipe_out, out)
            else:
                status = self._pipe_into(cmd, items, pipe_out, out)
            if status == ABORT:
                break
            if not last:
                items = self._pipe_items(out)
                if not items:
                    break
        if shell is not None and status != ABORT:
            status = max(status, self._shell(shell, final_out.getvalue()))
        return status

    def _loop(self, cmd: Command, addr: int, count: int, flags: int, out) -> int:
        """The first stage: `count` calls, dot advancing by the increment between them. The
        loop stops at the first failure (a count is often a guess; errors would repeat)."""
        if count == 0:  # nothing runs, but dot still moves to the address
            self.session.dot = self.session.last_dot = addr & MASK64
            return OK
        if flags & LOOP:
            flags |= LOOPFIRST
        if cmd.stage.name == "$<" and not cmd.stage.is_format:
            self.session.vars["9"] = count  # `$<` sees its count in variable 9 and runs once
            count = 1
        status = self._invoke(cmd, addr, flags, out, count=count)
        flags &= ~LOOPFIRST
        done = 1
        while done < count and status == OK:
            status = self._invoke(cmd, dot_incr(self.session, ","), flags, out, count=count)
            done += 1
        return status

    def _pipe_into(self, cmd: Command, items: list[_Item], flags: int, out) -> int:
        """A stage after `|`: once per address with ADDRSPEC|LOOP|PIPE (LOOPFIRST on the
        first), or once with the whole list for pipe_all dcmds."""
        flags |= ADDRSPEC | LOOP | PIPE
        if cmd.dcmd is not None and cmd.dcmd.pipe_all:
            self._assign(items[0], out)
            return self._invoke(cmd, items[0].addr, flags | LOOPFIRST, out,
                                pipe=[it.addr for it in items])
        status = OK
        for k, item in enumerate(items):
            self._assign(item, out)
            rc = self._invoke(cmd, item.addr, flags | (LOOPFIRST if k == 0 else 0), out)
            status = max(status, rc)
            if rc == ABORT:
                break
        return status

    def _assign(self, item: _Item, out) -> None:
        for name, value in item.assigns:
            self.session.vars[name] = value
        if isinstance(out, PipeCapture):
            out.begin(item.assigns)

    def _pipe_items(self, capture: PipeCapture) -> list[_Item]:
        """Each captured line is an expression whose value goes to the next stage."""
        items = []
        radix = self.session.radix
        for assigns, text in capture.segments():
            for line in text.splitlines():
                if not line.strip():
                    continue
                value = self.evaluator.eval(parse_expression(line, radix))
                own = tuple((name, value) for name in capture.bound)
                items.append(_Item(value, assigns + own))
        return items

    # -- one dcmd call ----------------------------------------------------------------------
    def _invoke(self, cmd: Command, addr: int, flags: int, out, pipe=None,
                count: int = 1) -> int:
        s = self.session
        s.dot = addr & MASK64
        s.last_dot = s.dot
        try:
            if cmd.dcmd is None:
                from mdbpy.lang.formats import display

                display(s, cmd.stage.name, s.dot, cmd.stage.fmt, flags=flags, out=out,
                        count_eval=self.eval_expr)
                return OK
            reason = cmd.dcmd.enabled(s) if cmd.dcmd.enabled is not None else None
            if reason:
                raise MdbError(reason)
            inv = Invocation(s, s.dot, flags, list(cmd.args), out, pipe, name=cmd.dcmd.name,
                             count=count)
            return ERR if cmd.dcmd.func(inv) else OK
        except UsageError as e:
            if str(e):
                s.warn(str(e))
            if cmd.dcmd is not None:
                s.err.write(usage_line(cmd.dcmd) + "\n")
                s.warn(f"try '::help {cmd.dcmd.name}' for more information")
            return ABORT
        except CommandAbort as e:
            if str(e):
                s.warn(str(e))
            return ABORT
        except MdbError as e:
            s.warn(str(e))
            return ERR
        except (QuitSession, KeyboardInterrupt, BrokenPipeError):
            raise  # BrokenPipeError: the output is gone (`| head`), the CLI ends quietly
        except Exception as e:  # a bug in a dcmd must not end the session
            s.warn(f"internal error in {cmd.shown}: {type(e).__name__}: {e}")
            if os.environ.get("MDBPY_DEBUG"):
                import traceback

                traceback.print_exc(file=s.err)
            return ABORT

    # -- shell ------------------------------------------------------------------------------
    def _shell(self, command: str, stdin_text: str | None) -> int:
        """`!cmd` or `pipeline ! cmd`: run `$SHELL -c cmd`, feeding it the pipeline's output,
        and copy its standard output to the session's output."""
        import subprocess

        s = self.session
        shell = os.environ.get("SHELL") or "/bin/sh"
        s.out.flush()
        try:
            proc = subprocess.run(
                [shell, "-c", command], stdout=subprocess.PIPE,
                input=None if stdin_text is None else stdin_text.encode(),
                stdin=subprocess.DEVNULL if stdin_text is None else None)
        except OSError as e:
            raise MdbError(f"failed to run {shell}: {e.strerror}") from None
        s.out.write(proc.stdout.decode(errors="replace"))
        return ERR if proc.returncode else OK


def as_text(line: str | bytes) -> str:
    """A line of input as text, by the one rule of every input path (-e, -f, standard input,
    `$<` and `$<<` macro files, ~/.mdbpyrc, the REPL): it must be UTF-8. Bytes are decoded;
    text is checked for the lone surrogates that stand for undecodable bytes (a -e argument,
    a terminal in another encoding). Raises MdbError `not UTF-8 text (...)` naming the first
    bad byte or character and its column, for the caller to name the line."""
    try:
        if isinstance(line, str):
            line.encode("utf-8")
            return line
        return line.decode("utf-8")
    except UnicodeEncodeError as e:
        try:  # undecodable bytes carried as surrogates: name the byte
            return as_text(line.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:
            what, at = f"character U+{ord(line[e.start]):04X}", e.start
    except UnicodeDecodeError as e:
        what, at = f"byte 0x{line[e.start]:02x}", e.start
    raise MdbError(f"not UTF-8 text ({what} at column {at + 1})")


def usage_line(d: Dcmd) -> str:
    """mdb_dcmd_usage: `Usage: [address]::name usage` (`address` when one is required)."""
    colons = "" if d.name[0] in "$:" else "::"
    prefix = {":": "address", "?": "[address]"}.get(d.addr, "") + colons
    return f"Usage: {prefix}{d.name} {d.usage}".rstrip()

