"""The one place that talks to radical.saga: job services, descriptions, states.

Batch systems are reached through radical.saga (``pbspro://``, ``torque://``,
``slurm://``, ``condor://``, ``fork://``) rather than our own ``qsub`` parsing, as the
Blue Waters pilot did.  What radical.saga 1.103 needs, learnt the hard way (see
REFERENCE.md), is handled here once so the plugins stay small:

* creating a ``job.Service`` forks shells and probes the batch tools (1–1.6 s as radical.saga
  ships; ~0.2 s in our batch broker, which tunes its shells: :mod:`~harvester_plugins.saga_shell`), so there
  is one per URL per process, cached at module level.  That cache is a *connection*,
  not plugin state: Harvester builds a new plugin instance on every call and the
  plugins keep everything else on the WorkSpec or on disk.  Calls through one service
  are serialised by a per-URL lock because its PTY shell is not thread-safe.
* the executable is not pasted into the description: radical.saga's PBS adaptor
  escapes ``$`` and quotes and echoes the script through ``sh``, and the Slurm adaptor
  joins arguments unquoted.  Instead the body (``hpc.batch.render_script(...,
  body_only=True)``) goes to ``<workdir>/worker.sh`` on the shared file system and the
  batch job runs ``/bin/bash <workdir>/worker_wrapper.sh``, which runs the body and
  records its exit code in ``<workdir>/batch_exit_code``.  That marker settles the
  cases where the batch system no longer knows the job (Slurm after ``MinJobAge``
  without accounting; PBS, which guesses "done, exit 0" for a vanished job).
* ``jd.queue`` must be set for ``slurm://`` (the adaptor calls ``.lower()`` on it);
  Slurm's ``exit_code`` is a string, fork's an int, and a cancelled job may raise on
  it; the Slurm adaptor leaves ``tmp_*.slurm`` in the working directory; job ids are
  ``[<url>]-[<native id>]`` (fork: ``[fork://localhost]-[<pid>.0]``).
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

#: URL scheme → batch script kind of ``hpc.batch.render_script``.
SCHEME_KINDS = {"pbspro": "pbs", "torque": "pbs", "slurm": "slurm", "condor": "local", "fork": "local"}

EXIT_MARKER = "batch_exit_code"
BODY_FILE = "worker.sh"
WRAPPER_FILE = "worker_wrapper.sh"

_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./+@=,:%-]*$")
_ID_RE = re.compile(r"^\[(.*)\]-\[(.*?)\]$")

_lock = threading.Lock()
_services: dict[str, Any] = {}
_service_locks: dict[str, threading.Lock] = {}


class BatchError(Exception):
    """A batch system refused or failed a request; ``temporary`` when a retry may help."""

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class UnknownJob(BatchError):
    """The batch system does not know this job id (never existed, or purged)."""


def batch_kind(url: str) -> str:
    """``pbs`` / ``slurm`` / ``local`` for a job service URL; ValueError naming the URL otherwise."""
    scheme = urlsplit(url).scheme.split("+")[0] if isinstance(url, str) else ""
    if scheme not in SCHEME_KINDS:
        raise ValueError(
            f"batch_url {url!r}: unsupported scheme {scheme!r} (expected one of {', '.join(sorted(SCHEME_KINDS))})"
        )
    return SCHEME_KINDS[scheme]


def make_job_id(url: str, batch_id: str) -> str:
    return f"[{url}]-[{batch_id}]"


def parse_job_id(saga_id: str) -> tuple[str, str]:
    """``[url]-[native]`` → (url, native id)."""
    match = _ID_RE.match(saga_id or "")
    if not match:
        raise ValueError(f"not a radical.saga job id: {saga_id!r}")
    return match.group(1), match.group(2)


# -- services ------------------------------------------------------------------------------
def _saga() -> Any:
    import radical.saga as rs

    return rs


#: A job service unused this long is closed.  Every radical.saga job service runs a state
#: monitor thread (the fork adaptor's reads its shell every 10 ms, Slurm's runs scontrol
#: every 3 s, PBS's qstat every 5 s): an open idle service costs a MOM-node daemon about
#: a CPU second a minute, while opening one costs the broker ~0.2 s.  So services live only while
#: used (a Harvester cycle or a daemon round) and are opened again on the next call.
SERVICE_IDLE_SECONDS = float(os.environ.get("COMPASS_SAGA_IDLE_SECONDS", "20"))

_last_used: dict[str, float] = {}
_idle_timers: dict[str, threading.Timer] = {}


def get_service(url: str) -> tuple[Any, threading.Lock]:
    """The cached job service for ``url`` and the lock that serialises its use."""
    batch_kind(url)
    with _lock:
        service = _services.get(url)
        if service is None:
            try:
                service = _saga().job.Service(url)
            except Exception as exc:
                raise BatchError(f"cannot open job service {url}: {_message(exc)}", temporary=True) from exc
            _services[url] = service
            _service_locks[url] = threading.Lock()
            log.info("opened job service %s", url)
        _last_used[url] = time.monotonic()
        if url not in _idle_timers:
            _arm_idle_timer(url, SERVICE_IDLE_SECONDS)
        return service, _service_locks[url]


def _arm_idle_timer(url: str, delay: float) -> None:
    """(with ``_lock`` held) close ``url``'s service once it has been idle long enough."""
    timer = threading.Timer(max(0.05, delay), _close_if_idle, args=(url,))
    timer.daemon = True
    timer.name = f"saga-idle-{url}"
    _idle_timers[url] = timer
    timer.start()


def _close_if_idle(url: str) -> None:
    with _lock:
        _idle_timers.pop(url, None)
        service, lock = _services.get(url), _service_locks.get(url)
        if service is None or lock is None:
            return
        idle = time.monotonic() - _last_used.get(url, 0.0)
        if idle < SERVICE_IDLE_SECONDS or not lock.acquire(blocking=False):  # used since, or in use now
            _arm_idle_timer(url, SERVICE_IDLE_SECONDS - idle if idle < SERVICE_IDLE_SECONDS else 1.0)
            return
        try:
            _services.pop(url, None)
            _service_locks.pop(url, None)
        finally:
            lock.release()
    log.debug("closing idle job service %s", url)
    _close(url, service)


def drop_service(url: str) -> None:
    """Forget (and close) a service whose shell broke, so the next call reconnects."""
    with _lock:
        service = _services.pop(url, None)
        _service_locks.pop(url, None)
        timer = _idle_timers.pop(url, None)
    if timer is not None:
        timer.cancel()
    if service is not None:
        _close(url, service)


def _close(url: str, service: Any) -> None:
    try:
        service.close()
    except Exception as exc:  # closing a broken shell may fail too
        log.debug("closing %s: %s", url, exc)


def open_services() -> list[str]:
    """URLs of the job services open right now (for tests and the status view)."""
    with _lock:
        return sorted(_services)


def close_services() -> None:
    """Close every cached service (end of a daemon or test session)."""
    for url in list(_services):
        drop_service(url)


def _message(exc: BaseException) -> str:
    """radical.saga exceptions carry a traceback-ish text; keep the first meaningful line."""
    text = ""
    getter = getattr(exc, "get_message", None)
    if callable(getter):
        try:
            text = str(getter())
        except Exception:
            text = ""
    text = text or str(exc) or type(exc).__name__
    return " ".join(text.split())[:480]


# -- submission ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchRequest:
    """What one worker asks of the batch system."""

    workdir: str  # the worker's access point (shared file system)
    body: str  # script body: environment, cd, launcher line
    queue: str
    nodes: int
    slots_per_node: int
    walltime: int  # seconds
    project: str = ""
    job_name: str = "compass"


def check_workdir(path: str) -> str:
    if not isinstance(path, str) or not _SAFE_PATH.match(path) or ".." in path.split("/"):
        raise ValueError(
            f"access point {path!r}: expected an absolute path of letters, digits and _./+@=,:%- (no '..')"
        )
    return path


def write_worker_scripts(req: BatchRequest) -> Path:
    """Write ``worker.sh`` (the body) and the wrapper that records its exit code; return the wrapper."""
    workdir = Path(check_workdir(req.workdir))
    workdir.mkdir(parents=True, exist_ok=True)
    body = workdir / BODY_FILE
    body.write_text("#!/bin/bash\n" + req.body)
    body.chmod(0o755)
    marker = workdir / EXIT_MARKER
    marker.unlink(missing_ok=True)
    wrapper = workdir / WRAPPER_FILE
    wrapper.write_text(
        "#!/bin/bash\n"
        "# runs the worker body and leaves its exit code for the monitor\n"
        f"/bin/bash {body}\n"
        "rc=$?\n"
        f"printf '%s\\n' \"$rc\" > {marker}.tmp && mv -f {marker}.tmp {marker}\n"
        "exit $rc\n"
    )
    wrapper.chmod(0o755)
    return wrapper


def build_description(url: str, req: BatchRequest, wrapper: Path) -> Any:
    """A radical.saga job description for ``req`` on ``url``."""
    rs = _saga()
    kind = batch_kind(url)
    jd = rs.job.Description()
    jd.executable = "/bin/bash"
    jd.arguments = [str(wrapper)]
    jd.name = req.job_name
    jd.working_directory = req.workdir
    jd.output = f"{req.workdir}/batch.out"
    jd.error = f"{req.workdir}/batch.err"
    if kind != "local":
        jd.queue = req.queue
        jd.total_cpu_count = req.nodes * req.slots_per_node
        jd.processes_per_host = req.slots_per_node
        jd.wall_time_limit = max(1, math.ceil(req.walltime / 60))  # minutes
        if req.project:
            jd.project = req.project
    if kind == "slurm":
        jd.system_architecture = {"exclusive": True}  # whole nodes: the agent owns every slot
        # the slurm adaptor turns these into --ntasks / --ntasks-per-node: without number_of_processes
        # it asks for one task and Slurm packs the job onto one node (pbspro refuses the attribute)
        jd.number_of_processes = req.nodes * req.slots_per_node
    return jd


def submit(url: str, req: BatchRequest) -> tuple[str, str]:
    """Submit one worker; returns (radical.saga job id, native batch id). Raises BatchError."""
    wrapper = write_worker_scripts(req)
    jd = build_description(url, req, wrapper)
    service, lock = get_service(url)
    try:
        with lock:
            job = service.create_job(jd)
            job.run()
            saga_id = str(job.id)
    except Exception as exc:
        if _shell_broken(exc):
            drop_service(url)
            raise BatchError(f"job service {url} failed: {_message(exc)}", temporary=True) from exc
        raise BatchError(f"submission to {url} refused: {_message(exc)}") from exc
    finally:
        _clean_adaptor_files(req.workdir)
    return saga_id, parse_job_id(saga_id)[1]


def _clean_adaptor_files(workdir: str) -> None:
    """The Slurm adaptor leaves its ``tmp_*.slurm`` script in the working dir (sbatch has copied it)."""
    try:
        for path in Path(workdir).glob("tmp_*.slurm"):
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("cleaning %s: %s", workdir, exc)


def _shell_broken(exc: BaseException) -> bool:
    text = _message(exc).lower()
    return any(s in text for s in ("pty", "shell", "broken pipe", "eof", "not alive"))


# -- status ---------------------------------------------------------------------------------
@dataclass
class BatchState:
    """What the batch system says about one job."""

    state: str  # radical.saga state name: New, Pending, Running, Done, Failed, Canceled, Suspended, Unknown
    exit_code: int | None = None
    created: datetime.datetime | None = None
    started: datetime.datetime | None = None
    finished: datetime.datetime | None = None


def _to_datetime(value: Any) -> datetime.datetime | None:
    """radical.saga times: epoch floats today (Harvester's plugins expected date strings)."""
    if value in (None, "", True, False):
        return None
    if isinstance(value, int | float):
        return datetime.datetime.fromtimestamp(float(value), datetime.UTC).replace(tzinfo=None)
    text = str(value).strip()
    try:
        return datetime.datetime.fromtimestamp(float(text), datetime.UTC).replace(tzinfo=None)
    except ValueError:
        pass
    for fmt in ("%a %b %d %H:%M:%S %Y", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def _exit_code(job: Any) -> int | None:
    try:
        value = job.exit_code
    except Exception:  # a cancelled job raises on exit_code
        return None
    if value is None:
        return None
    try:
        return int(str(value).split(":")[0])
    except ValueError:
        return None


def query(url: str, saga_id: str) -> BatchState:
    """Current state of one job. Raises UnknownJob or BatchError."""
    service, lock = get_service(url)
    try:
        with lock:
            job = service.get_job(saga_id)
            state = str(job.state)
            exit_code = _exit_code(job) if state in ("Done", "Failed", "Canceled") else None
            times = []
            for attr in ("created", "started", "finished"):
                try:
                    times.append(_to_datetime(getattr(job, attr)))
                except Exception:
                    times.append(None)
    except Exception as exc:
        message = _message(exc)
        lowered = message.lower()
        if "unknown" in lowered or "invalid job id" in lowered or "cannot reconnect" in lowered.replace("'", ""):
            raise UnknownJob(f"{saga_id}: {message}") from exc
        if _shell_broken(exc):
            drop_service(url)
        raise BatchError(f"cannot query {saga_id}: {message}", temporary=True) from exc
    return BatchState(state, exit_code, *times)


def read_exit_marker(workdir: str | None) -> int | None:
    """The exit code the wrapper recorded, if the worker got that far."""
    if not workdir:
        return None
    try:
        return int((Path(workdir) / EXIT_MARKER).read_text().strip())
    except (OSError, ValueError):
        return None


def cancel(url: str, saga_id: str) -> None:
    """Cancel one job; a job the batch system no longer knows counts as cancelled."""
    service, lock = get_service(url)
    try:
        with lock:
            job = service.get_job(saga_id)
            if str(job.state) in ("Done", "Failed", "Canceled"):
                return
            job.cancel()
    except Exception as exc:
        message = _message(exc)
        if "unknown" in message.lower() or "invalid job id" in message.lower():
            raise UnknownJob(f"{saga_id}: {message}") from exc
        if _shell_broken(exc):
            drop_service(url)
        raise BatchError(f"cannot cancel {saga_id}: {message}", temporary=True) from exc


# -- recovery: a batch job found by its unique name ----------------------------------------
def find_job(url: str, name: str, workdir: str, *, timeout: float = 60.0) -> str | None:
    """The native id of the batch job called ``name`` (running ``<workdir>/worker_wrapper.sh``), or None.

    A daemon killed between qsub's answer and persisting the id left a batch job nobody
    watches; its name (unique per submission, persisted *before* qsub) finds it again.
    radical.saga cannot do it — a reconnected job has no ``name`` — so the batch system's
    own query tool is asked: ``squeue --name`` (Slurm), ``qstat -f`` (PBS / Torque, and
    the slurm-wlm-torque wrappers), the process table (fork).  Tunnelled URLs
    (``+ssh``) would need the query run remotely: None, with a warning.
    """
    import shutil
    import subprocess

    parts = urlsplit(url)
    scheme, _, tunnel = parts.scheme.partition("+")
    if tunnel:
        log.warning("cannot look a batch job up by name through %s (remote): treating %s as not submitted", url, name)
        return None
    if scheme == "fork":
        return _find_forked(str(Path(workdir) / WRAPPER_FILE))
    kind = batch_kind(url)
    argv = ["squeue", "-h", "--name", name, "-o", "%i"] if kind == "slurm" else ["qstat", "-f"]
    if shutil.which(argv[0]) is None:
        raise BatchError(f"cannot look up {name}: {argv[0]} not found", temporary=True)
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BatchError(f"{argv[0]} gave no answer within {timeout:.0f} s", temporary=True) from None
    if res.returncode != 0:
        raise BatchError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()[:200]}", temporary=True)
    if kind == "slurm":
        ids = res.stdout.split()
        return ids[0] if ids else None
    return parse_qstat_f_by_name(res.stdout).get(name)


def parse_qstat_f_by_name(text: str) -> dict[str, str]:
    """Job name → job id from ``qstat -f`` (``Job Id: <id>`` blocks with ``Job_Name = <name>``)."""
    found: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Job Id:"):
            current = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("Job_Name =") and current:
            found.setdefault(stripped.split("=", 1)[1].strip(), current)
    return found


def _find_forked(wrapper: str) -> str | None:
    """fork:// runs each job under a monitor shell whose command line holds the job's command."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if wrapper in cmd and "shell_job/monitor." in cmd:
            return f"{proc.info['pid']}.0"
    return None


def saga_env_for_tests(base: str) -> dict[str, str]:
    """HOME and RADICAL_BASE under ``base``: radical.saga writes ~/.radical and ~/.bash_history."""
    os.makedirs(base, exist_ok=True)
    return {"HOME": base, "RADICAL_BASE": base}
