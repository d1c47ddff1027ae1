"""The keeper: a tiny parent that outlives its node agent and collects its payloads' exit codes.

Why: a payload is one process, the command itself, started by the node agent.  If the
agent dies (kill -9, the OOM killer, a bug), nobody is left to ``wait4`` for the
payloads, and their exit codes — which decide each job's final state — are lost.  A
shell wrapper per payload that writes the code to a file (what grid mode does) costs
one more process per payload, 512 per submission.  Instead, before anything else (and
before any thread exists, so ``fork`` is safe) the agent's process forks:

- the parent becomes the keeper: it marks itself a child subreaper
  (``prctl(PR_SET_CHILD_SUBREAPER)``), so when the agent dies the kernel re-parents the
  agent's payloads to it instead of to init, and then it blocks in ``waitpid`` — no
  timer, no CPU.  It stays the process the launcher (mpiexec / srun / aprun) started,
  so the launcher's signals reach it; it forwards them to the agent.
- the child is the agent, exactly as before.

When the agent exits by itself with 0 (every outcome written), the keeper exits 0 at
once.  When the agent is killed by a signal, or exits with an error while processes it
left are still the keeper's children (an unhandled exception ends the agent but not its
payloads, which run in sessions of their own), the keeper calls ``takeover`` (the node
agent's code: adopt the payloads still running, wait for them, write the outcomes still
missing, exit with the agent's exit-code rules).  The keeper's command name (``comm``) is set to
``node-keeper`` so ``top`` / ``ps -o comm`` tell the two apart; its argv stays the same.

Where ``prctl`` is unavailable (not Linux) there is no keeper: the agent runs alone,
as before.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)

PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
#: what the launcher may send that the agent must see
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

#: ``takeover(info, status, terminated)``: the agent ended with ``status`` (as
#: ``os.waitstatus_to_exitcode``: -N killed by signal N, N > 0 its own exit code);
#: ``info`` is what it told the keeper (None if it died before); ``terminated`` is True
#: when a signal to end everything arrived.  Returns the keeper's exit code.
Takeover = Callable[[str | None, int, bool], int]


def _prctl(option: int, arg: int | bytes) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, arg, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def fork_keeper(takeover: Takeover) -> Callable[[str], None]:
    """Fork; the keeper (parent) never returns from here, the agent (child) does.

    Returns, in the agent, ``tell(info)``: one line the keeper reads only if the agent
    dies (the agent's rank and whatever the takeover needs).  Without ``prctl`` no keeper
    is forked and ``tell`` does nothing.
    """
    if not _prctl(PR_SET_CHILD_SUBREAPER, 1):
        log.warning("no child subreaper on this system: no keeper for the node agent's payloads")
        return lambda info: None
    rfd, wfd = os.pipe()
    child = os.fork()
    if child == 0:  # the agent: not a subreaper itself (fork clears it)
        os.close(rfd)

        def tell(info: str) -> None:
            try:
                os.write(wfd, (info.replace("\n", " ") + "\n").encode())
            except OSError:
                pass
            finally:
                os.close(wfd)

        return tell
    os.close(wfd)
    code = 1
    try:
        code = _keep(child, rfd, takeover)
    except BaseException:  # the keeper must exit, whatever happened
        log.exception("node keeper failed")
    finally:
        logging.shutdown()
        os._exit(code)


def _keep(child: int, rfd: int, takeover: Takeover) -> int:
    _prctl(PR_SET_NAME, b"node-keeper")
    terminated = False

    def forward(signum: int, frame: object) -> None:
        nonlocal terminated
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            terminated = True
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)  # the agent, or a payload's orphaned child (reaped, ignored)
        except ChildProcessError:  # pragma: no cover - the agent is our child until we reap it
            return 1
        if pid == child:
            break
    for signum in FORWARDED:
        signal.signal(signum, signal.SIG_DFL)
    code = os.waitstatus_to_exitcode(status)
    if code == 0 or (code > 0 and not leftover_children()):  # the agent ended by itself: its code is the rank's
        return code
    info = _read_all(rfd).strip() or None
    return takeover(info, code, terminated)


def _read_all(fd: int) -> str:
    """What the dead agent told us; never blocks (a process it forked may still hold the pipe)."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # BlockingIOError: all there is has been read
            break
        if not data:
            break
        chunks.append(data)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def is_our_child(pid: int) -> bool:
    """True when ``pid`` is (still, or now) a child of this process — re-parented ones included."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[1]) == os.getpid()
    except (IndexError, ValueError):
        return False


def leftover_children() -> list[int]:
    """Our direct children now (what a dead agent left besides its payloads: a DB server, strays)."""
    kids: list[int] = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children", "rb") as f:
                kids.extend(int(k) for k in f.read().split())
    except (OSError, ValueError):
        pass
    return kids
