"""::release and ::kill: let go of a live process, or end it (mdb's :R and :k).

Both leave the session running with no process behind it: later commands that read memory fail
with a one-line "no process active" message naming what happened, so a batch that releases the
process part-way through reports clearly instead of reading a process that has moved on.
"""

from __future__ import annotations

from mdbpy.dcmd import Flag, Invocation, dcmd
from mdbpy.errors import MdbError, UsageError


def _live_target(inv: Invocation):
    target = inv.session.target
    if target.kind != "live":
        raise MdbError("command is not supported by current target")
    return target


@dcmd("release", "release the previously attached process", aliases=(":R",),
      opts=[Flag("a", "stopped", "leave the process stopped instead (it is sent SIGSTOP as it "
                 "is released; continue it with `kill -CONT PID`)")],
      help="Detach from the live process and let it run on, exactly as it was when mdbpy "
           "stopped it. The session goes on without a "
           "process: commands that read memory then fail with 'no process active'; quit with "
           "$q, or attach again with mdbpy -p PID.",
      example="::release")
def release(inv: Invocation):
    if inv.operands:
        raise UsageError("::release takes no arguments (usage: ::release [-a])")
    target = _live_target(inv)
    pid = target.pid
    target.release(leave_stopped=inv.opts.stopped)
    inv.session.invalidate()
    inv.print(f"process {pid} released" + (" (left stopped)" if inv.opts.stopped else ""))


@dcmd("kill", "forcibly kill and release target", aliases=(":k",),
      help="Send SIGKILL to the live process and collect its exit. The session goes on without "
           "a process: commands that read memory then fail with 'no process active'.",
      example="::kill")
def kill(inv: Invocation):
    if inv.args:
        raise UsageError("::kill takes no arguments")
    target = _live_target(inv)
    pid = target.pid
    target.kill()
    inv.session.invalidate()
    inv.print(f"process {pid} killed")
