"""The batch broker: radical.saga in a child process, so the MOM-node daemon never loads it.

radical.saga costs a process ~30 MB and 170 modules, and its job services run monitor
threads and PTY shells; the daemon itself needs none of that, only answers to "submit
this", "what state is batch job X", "cancel it".  So the daemon's backend
(:class:`BrokerBatchBackend`, the same ``BatchBackend`` protocol as
:class:`~harvester_plugins.daemon_backend.PluginBatchBackend`) starts one child,
``python -m harvester_plugins.batch_broker``, the first time it needs the batch system,
and asks it over a pipe, one JSON line per request and per answer.  The child runs the
very PluginBatchBackend (the Harvester plugins) the daemon used to run in-process, so
what reaches the batch system is unchanged; its import is paid once per daemon.

The daemon's gate before its first getJob is :meth:`BrokerBatchBackend.probe`: a native
query of the batch system from the daemon itself, while this child starts and opens the
job service (an ``open`` request whose answer is not waited for).  Requests are served
one at a time, so the first submission waits here for that open.  The child is ours
alone, so it tunes radical.saga's local shells (:mod:`harvester_plugins.saga_shell`:
``/bin/sh`` instead of the user's login shell, a 10 ms PTY flush): a job service opens in
~0.2 s instead of 1–1.6 s, a submit or state query takes ~25 ms instead of ~115 ms.

Failure behaviour — the daemon's retry and circuit-breaker logic must see what it saw:

* an answer carries the exception the plugins raised, rebuilt here with its type:
  ``BatchError`` / ``UnknownJob`` with ``temporary``, ``PreflightError`` with its exit code;
* a child that dies, or does not answer within ``hpc.batch_timeout`` + a grace (it
  bounds each batch call by ``batch_timeout`` itself), is killed and the call in flight
  fails with a temporary ``BatchError`` (``PreflightError`` for a preflight); the next
  call starts a new child;
* a submission whose answer was lost may have reached the batch system: before that
  submission is tried again, its batch job is looked up by its unique name (the
  submission's directory name, as after a daemon crash) and adopted if it exists — a job
  set never runs twice.

Safety: the child takes requests only from its parent, over its stdin; it runs with the
parent's environment; nothing received from the network reaches it.  Its stdout is the
answer channel only (the plugins' stray prints go to stderr); its log records travel up
the pipe and are logged by the daemon, so ``--log-file`` holds them too.  It ignores
SIGINT / SIGTERM (the daemon still needs it to cancel batch jobs on SIGTERM) and exits
when its stdin closes, i.e. when the daemon exits, however it exits.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from harvester_plugins.saga_backend import BatchError, UnknownJob, batch_kind, read_exit_marker

log = logging.getLogger(__name__)

#: Seconds the broker gets on top of ``hpc.batch_timeout`` (it bounds the batch call itself).
ANSWER_GRACE = 10.0
#: Seconds a new broker gets to import radical.saga and say hello (a loaded MOM node is slow).
START_SECONDS = 60.0
#: The module run as the child.
MODULE = "harvester_plugins.batch_broker"


class BrokerDied(BatchError):
    """The broker died or stopped answering: the call's outcome is unknown (temporary)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, temporary=True)


class _Child:
    """One broker process and its pipe ends; no reference back to the backend (for the finalizer)."""

    def __init__(self, proc: subprocess.Popen[bytes], config: str) -> None:
        self.proc = proc
        self.config = config  # the site config it was started with (repr)
        self.buffer = bytearray()
        self.opening: dict[int, float] = {}  # id of an "open" sent ahead → monotonic time it must be done by

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def read_line(self, deadline: float) -> bytes | None:
        """The next line from the child; None at EOF; TimeoutError past ``deadline`` (monotonic)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            poller = select.poll()  # not select(): a busy daemon's fds may pass FD_SETSIZE
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
            if not poller.poll(left * 1000):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer = bytearray(rest)
        return line

    def stop(self, wait: float = 5.0) -> None:
        """Close its stdin (it exits on EOF); kill it if it does not go within ``wait`` s."""
        proc = self.proc
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> int | None:
        """SIGKILL (a wedged child may hold a stuck batch call) and reap; its exit status."""
        try:
            self.proc.kill()
        except OSError:
            pass
        self.stop(wait=10.0)
        return self.proc.returncode


class BrokerBatchBackend:
    """``BatchBackend`` of the daemon, served by a ``batch_broker`` child process (see module doc)."""

    def __init__(self, site: Any) -> None:
        batch_kind(site.hpc.batch_url)  # a bad URL fails at start, naming it (as PluginBatchBackend does)
        self.site = site
        self._lock = threading.Lock()
        self._child: _Child | None = None
        self._finalizer: Any = None
        self._seq = 0
        self._unsure: set[str] = set()  # subdirs whose submission answer was lost
        self._opened_ahead = False  # probe() asked the broker to open the job service already
        self.starts = 0  # brokers started (a restart after a death counts)

    # -- the protocol ----------------------------------------------------------------------
    def probe(self) -> None:
        """The fast gate of the daemon's getJob; the job service opens in the broker meanwhile.

        The batch system is asked natively from here (:func:`compass_pilot.preflight.probe_batch`:
        ``squeue``, ``qstat -Q``, … milliseconds) while the broker starts and opens
        radical.saga's job service (1-2 s) on a thread of its own.  The first submission
        waits for that open in the broker (it serves one request at a time); an open that
        fails there is a temporary submission error, retried — the jobs are kept.  For a
        URL the probe cannot judge (``+ssh`` / ``+gsissh``, another host) the full
        :meth:`preflight` runs instead.  Raises PreflightError.
        """
        from compass_pilot.preflight import probe_batch

        if self._opened_ahead:
            judged = probe_batch(self.site)
        else:
            self._opened_ahead = True
            ahead = threading.Thread(target=self._open_ahead, name="broker-open", daemon=True)
            ahead.start()
            try:
                judged = probe_batch(self.site)
            except BaseException:
                ahead.join()  # a daemon that stops here must not leave a half-started broker behind
                raise
        if not judged:
            self.preflight()

    def _open_ahead(self) -> None:
        """Start the broker and ask it to open the job service; the answer is not waited for."""
        url = self.site.hpc.batch_url
        if "+" in url.split("://", 1)[0]:
            return  # a tunnel: the full preflight opens it, on the caller's thread
        try:
            with self._lock:
                child = self._live_child()
                self._seq += 1
                child.send({"op": "open", "id": self._seq, "args": {}})
                child.opening[self._seq] = time.monotonic() + self.site.hpc.batch_timeout + ANSWER_GRACE
        except Exception as exc:  # the first submission starts it again and says why
            log.warning("batch broker: cannot open the job service ahead of the first submission: %s", exc)

    def preflight(self) -> None:
        """The broker's PluginBatchBackend.preflight (adaptor, submit command, job service).

        A broker that cannot start or dies is a failed preflight too: no job is taken then.
        """
        from compass_pilot.preflight import PreflightError

        try:
            self._call("preflight", {})
        except BrokerDied as exc:
            raise PreflightError(str(exc)) from None

    def submit(self, submission: Any, subdir: Path, jobset: Path) -> str:
        """Submit one submission; its batch id.  Raises BatchError (``temporary`` says whether to retry)."""
        key = str(subdir)
        if key in self._unsure:
            found = self.find(Path(subdir).name, Path(subdir))  # BatchError: retried later, still unsure
            self._unsure.discard(key)
            if found:
                log.warning("%s: the batch job of a submission whose answer was lost exists: %s", key, found)
                return str(found)
        args = {
            "queue": submission.queue,
            "nodes": submission.nodes,
            "slots_per_node": submission.slots_per_node,
            "walltime": submission.walltime,
            "panda_ids": [job.panda_id for job in submission.jobs],
            "subdir": key,
            "jobset": str(jobset),
        }
        try:
            return str(self._call("submit", args))
        except BrokerDied:
            self._unsure.add(key)
            raise

    def status(self, batch_id: str, subdir: Path) -> str:
        """A WorkSpec status (submitted, running, finished, failed, cancelled, idle, missed)."""
        return str(self._call("status", {"batch_id": batch_id, "subdir": str(subdir)}))

    def kill(self, batch_id: str, subdir: Path) -> None:
        self._call("kill", {"batch_id": batch_id, "subdir": str(subdir)})

    def find(self, job_name: str, subdir: Path) -> str | None:
        """The batch id of the batch job named ``job_name`` (recovery), or None."""
        found = self._call("find", {"job_name": job_name, "subdir": str(subdir)}, extra=self.site.hpc.batch_timeout)
        return str(found) if found else None

    def ended(self, subdir: Path) -> bool:
        """The worker wrapper has left its exit code (a file: no broker, no batch system call)."""
        return read_exit_marker(str(subdir)) is not None

    def close(self) -> None:
        """Stop the broker (it is started again by the next call)."""
        with self._lock:
            child, self._child = self._child, None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
        if child is not None:
            child.stop()

    @property
    def broker_pid(self) -> int | None:
        """The running broker's pid (None before the first call or after a death)."""
        child = self._child
        return child.pid if child is not None and child.proc.poll() is None else None

    # -- plumbing ----------------------------------------------------------------------------
    def _start(self) -> _Child:
        root = str(Path(__file__).resolve().parents[1])  # the child runs this very code, not another install
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", MODULE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                close_fds=True,
            )
        except OSError as exc:  # no fork / no fd left: a passing condition, never the jobs' fault
            raise BrokerDied(f"cannot start the batch broker: {exc}") from None
        child = _Child(proc, repr(self.site))
        self._finalizer = weakref.finalize(self, child.stop)
        self.starts += 1
        from compass_pilot.config import config_to_dict

        hello = {
            "op": "hello",
            "id": 0,
            "site": config_to_dict(self.site),
            "source": self.site.source,
            "log_level": logging.getLogger().getEffectiveLevel(),
        }
        try:
            child.send(hello)
            self._answer(child, 0, time.monotonic() + START_SECONDS, "start")
        except BaseException:
            self._drop(child)
            raise
        log.info("batch broker started (pid %d) for %s", proc.pid, self.site.hpc.batch_url)
        return child

    def _drop(self, child: _Child, *, graceful: bool = False) -> int | None:
        """Forget ``child``: killed (it may be wedged), or asked to go (``graceful``)."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._child is child:
            self._child = None
        if graceful:
            child.stop()
            return child.proc.returncode
        return child.kill()

    def _live_child(self) -> _Child:
        """(with ``_lock`` held) the running broker, started (again) when there is none."""
        child = self._child
        if child is not None and child.proc.poll() is not None:
            log.warning("batch broker (pid %d) died (exit %s): starting another", child.pid, child.proc.returncode)
            self._drop(child)
            child = None
        if child is not None and child.config != repr(self.site):
            # the broker was started with the site as it was (in-process callers may change it): a fresh one
            log.info("site config changed: restarting the batch broker (pid %d)", child.pid)
            self._drop(child, graceful=True)
            child = None
        if child is None:
            child = self._child = self._start()
        return child

    def _call(self, op: str, args: dict[str, Any], *, extra: float = 0.0) -> Any:
        with self._lock:
            child = self._live_child()
            self._seq += 1
            # an open sent ahead (probe) is served first: this answer may wait for it too
            ahead = max(child.opening.values(), default=0.0) - time.monotonic()
            deadline = time.monotonic() + self.site.hpc.batch_timeout + ANSWER_GRACE + extra + max(0.0, ahead)
            try:
                child.send({"op": op, "id": self._seq, "args": args})
            except OSError:
                status = self._drop(child)
                raise BrokerDied(f"batch broker died before {op} (exit {status}): retried on a new one") from None
            return self._answer(child, self._seq, deadline, op)

    def _answer(self, child: _Child, seq: int, deadline: float, op: str) -> Any:
        """Read until the answer to request ``seq``; the child's log records are logged on the way."""
        while True:
            try:
                line = child.read_line(deadline)
            except TimeoutError:
                self._drop(child)
                raise BrokerDied(f"batch broker: no answer to {op} in time; killed, a new one next call") from None
            if line is None:
                status = self._drop(child)
                raise BrokerDied(f"batch broker died during {op} (exit {status}); a new one next call")
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("batch broker said something that is not JSON: %r", line[:200])
                continue
            if "log" in message:
                level, name, text = message["log"]
                logging.getLogger(str(name)).log(int(level), "[broker] %s", text)
                continue
            if message.get("id") in child.opening:  # the open sent ahead: its outcome is only logged
                del child.opening[message["id"]]
                if "error" in message:
                    log.warning(
                        "batch broker: opening the job service ahead failed (the submission opens it again): %s",
                        message["error"].get("message", "?"),
                    )
            if message.get("id") != seq:
                continue  # a late answer to a request given up on (cannot happen: that broker was killed)
            if "error" in message:
                raise _rebuild(message["error"])
            return message.get("value")


def _rebuild(error: dict[str, Any]) -> Exception:
    """The exception the broker's plugins raised, as the daemon's code expects it."""
    kind = str(error.get("type", ""))
    text = str(error.get("message", ""))
    temporary = bool(error.get("temporary", False))
    if kind == "UnknownJob":
        return UnknownJob(text, temporary=temporary)
    if kind == "BatchError":
        return BatchError(text, temporary=temporary)
    if kind == "PreflightError":
        from compass_pilot.exitcodes import ExitCode
        from compass_pilot.preflight import PreflightError

        try:
            code = ExitCode(int(error.get("exit_code", ExitCode.PREFLIGHT_FAILED)))
        except ValueError:
            code = ExitCode.PREFLIGHT_FAILED
        return PreflightError(text, code)
    if kind == "ValueError":
        return ValueError(text)
    return RuntimeError(f"{kind}: {text}" if kind else text)


# -- the child ---------------------------------------------------------------------------------
class _PipeLog(logging.Handler):
    """Log records go up the answer pipe as ``{"log": [level, logger, text]}`` lines."""

    def __init__(self, write: Any) -> None:
        super().__init__()
        self.write = write

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.write({"log": [record.levelno, record.name, text]})
        except Exception:  # logging must never break a batch call
            self.handleError(record)


class _JobRef:
    """What the plugins need of a job in a submission: its PandaID."""

    __slots__ = ("panda_id",)

    def __init__(self, panda_id: int) -> None:
        self.panda_id = panda_id


def _handle(backend: Any, op: str, args: dict[str, Any]) -> Any:
    if op == "preflight":
        return backend.preflight()
    if op == "open":
        return backend.open_service()
    if op == "submit":
        from hpc.packing import Submission

        submission = Submission(
            queue=str(args["queue"]),
            nodes=int(args["nodes"]),
            slots_per_node=int(args["slots_per_node"]),
            walltime=int(args["walltime"]),
            jobs=tuple(_JobRef(int(i)) for i in args["panda_ids"]),  # type: ignore[misc]
            placements=(),
        )
        from compass_pilot.faults import crash_point

        batch_id = backend.submit(submission, Path(args["subdir"]), Path(args["jobset"]))
        crash_point("broker-after-submit")  # the batch job exists, the daemon has not heard
        return batch_id
    if op == "status":
        return backend.status(str(args["batch_id"]), Path(args["subdir"]))
    if op == "kill":
        return backend.kill(str(args["batch_id"]), Path(args["subdir"]))
    if op == "find":
        return backend.find(str(args["job_name"]), Path(args["subdir"]))
    raise ValueError(f"batch broker: unknown request {op!r}")


def _error(exc: BaseException) -> dict[str, Any]:
    from compass_pilot.preflight import PreflightError

    kind = type(exc).__name__
    if isinstance(exc, UnknownJob):
        kind = "UnknownJob"
    elif isinstance(exc, BatchError):
        kind = "BatchError"
    elif isinstance(exc, PreflightError):
        kind = "PreflightError"
    error: dict[str, Any] = {"type": kind, "message": str(exc), "temporary": bool(getattr(exc, "temporary", False))}
    if isinstance(exc, PreflightError):
        error["exit_code"] = int(exc.exit_code)
    return error


def serve(requests: Any, answer_fd: int) -> int:
    """Answer the parent's requests from ``requests`` (its pipe) until EOF or a stop."""
    lock = threading.Lock()
    gone = threading.Event()  # the daemon closed its end: nobody reads answers or log records any more

    def write(message: dict[str, Any]) -> None:
        if gone.is_set():
            return
        data = json.dumps(message, default=str).encode() + b"\n"
        with lock:  # whole lines: log records come from the plugins' threads too
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(answer_fd, view) :]
            except BrokenPipeError:
                gone.set()  # an exiting daemon, not an error of ours: end quietly, no traceback

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_PipeLog(write))
    backend = None
    for raw in requests:
        try:
            message = json.loads(raw)
            op, seq = str(message["op"]), message.get("id")
        except (ValueError, KeyError, TypeError):
            continue  # only our parent writes here; a torn line is not a request
        if op == "stop":
            break
        try:
            if op == "hello":
                from compass_pilot.config import SiteConfig, build_section
                from harvester_plugins.daemon_backend import PluginBatchBackend

                root.setLevel(int(message.get("log_level", logging.INFO)))
                site = build_section(SiteConfig, message["site"], "", str(message.get("source", "")))
                site.source = str(message.get("source", "<defaults>"))
                backend = PluginBatchBackend(site)
                value: Any = os.getpid()
            elif backend is None:
                raise BatchError("batch broker: no hello yet", temporary=True)
            else:
                value = _handle(backend, op, message.get("args") or {})
            write({"id": seq, "value": value})
        except Exception as exc:  # every failure is an answer; the daemon decides
            write({"id": seq, "error": _error(exc)})
        if gone.is_set():
            break
    from harvester_plugins import saga_backend

    saga_backend.close_services()
    return 0


def main() -> int:
    """``python -m harvester_plugins.batch_broker``: serve the parent on stdin / stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C / SIGTERM are the daemon's to act on; it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # may still need us to cancel its batch jobs
    answer_fd = os.dup(1)  # the answer channel is ours alone: fd 1 (stray prints) goes to stderr
    os.set_inheritable(answer_fd, False)
    os.dup2(2, 1)
    try:  # before any log handler exists: radical.utils then patches logging without a warning
        import radical.saga  # noqa: F401
    except ImportError:  # said by the preflight (check_batch), with its exit code
        pass
    from harvester_plugins.saga_shell import tune

    tune()  # this process is ours alone: /bin/sh for its local shells, a short PTY flush
    return serve(sys.stdin.buffer, answer_fd)


if __name__ == "__main__":
    sys.exit(main())
