"""The node agent: one MPI rank per compute node runs that node's slots of a job set.

``python -m hpc.node_agent --jobset JOBSET.json [--fake-nodes]`` under aprun / srun /
mpiexec.  The rank is only used to learn which node this process is (rank → node),
from the launcher's environment or else from MPI (see ``_rank_and_size``); the
ranks never talk to each other, so one node dying or ending early cannot hang the rest
in a collective call.

What the Blue Waters pilot did, and what this does instead:

- The rank with ``rank % 32 == 0`` started MySQL and slept 90 s (later 600 s) with no
  readiness check.  Here the node's calibration DB is started once, by this process,
  and ``CalibDB.start()`` returns when it is ready; a failure gives every job of the
  node a result with code 1244 and the DB's diagnostic instead of 512 payloads
  finding out one by one.
- Pilots spun at ~100 % CPU each.  Here ONE thread waits for all of a node's payloads
  (:class:`compass_pilot.reaper.PayloadReaper`: a pidfd per payload in one epoll set,
  plus a self-pipe the SIGTERM handler and the result writers write to): nothing
  polls.  Each payload is one process, the command itself (no shell wrapper).  The
  timed wake-ups are the payloads' own (walltime, memory sample at ``sample_interval``)
  and the check for server kill requests (``<reports>/<PandaID>.kill``, written by the
  daemon) at the daemon's poll interval.
- A pilot killed while its payloads ran lost their exit codes.  Here ``main()`` first
  forks a tiny keeper (:mod:`hpc.keeper`, a child subreaper): if the agent dies (kill -9,
  OOM killer), its payloads become the keeper's children, and the keeper waits for them
  and writes their outcomes as the agent would have.
- A batch walltime overrun lost all results.  Here SIGTERM (what PBS / Slurm send at
  the walltime, forwarded by mpiexec / srun / aprun) kills every payload's process
  group and each job gets a failed result with code 1213 before the agent exits.

Each job's outcome goes to its own directory (its work dir — under Harvester the
per-job access point ``<accessPoint>/<PandaID>/``) in Harvester's shared-file format,
through :mod:`harvester_plugins.jobfiles`: the outputs to stage out (with size and
adler32, computed here where the data is), the job report, and last the job's
attributes with ``jobStatus`` finished / failed and its error code.  A real Harvester
and our daemon read the same files.  ``<reports>/<PandaID>.started`` (``pid time host``) is written when the
payload starts (the daemon turns it into a running heartbeat).  A job that already has
an outcome (a batch job requeued after a node failure) is not run again.  When the
job set names a daemon to wake (``notify``), the agent sends it one ``S`` datagram
with the PandaIDs it started and an ``E`` datagram after each outcome it wrote
(:mod:`hpc.notify`; a hint — the files stay the truth).

Exit code (the worker wrapper records it; the monitor plugin turns it into the
worker's status): 0 when every job of this node has its outcome — failed payloads
included, their errors travel per job; 143 when the batch system ended us (SIGTERM or
the walltime guard: every job then has a 1213 outcome, but the worker did not run to
its end); 1 when a job is left without an outcome or nodes had no rank; 2 for an
unreadable job set.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compass_pilot.errors import ErrorCode, PilotError, error_message
from compass_pilot.exitcodes import ExitCode
from compass_pilot.experiment import compass
from compass_pilot.faults import bug_point
from compass_pilot.job import JobSpec, new_guid
from compass_pilot.payload import PayloadProcess, PayloadResult
from compass_pilot.reaper import PayloadReaper
from compass_pilot.sections import CalibDBSection, GridSection, PayloadSection, expand
from harvester_plugins import jobfiles
from harvester_plugins.jobfiles import JobOutcome, OutputFile
from hpc import notify
from hpc.jobset import JobSet, NodeJob, atomic_write_text, read_jobset

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("hpc.node_agent")

CommandBuilder = Callable[[JobSpec, Path, dict[str, str], PayloadSection], tuple[list[str], dict[str, str]]]
Checker = Callable[[JobSpec, str, str, PayloadResult], tuple[int, str] | None]
CalibOpener = Callable[..., Any]

_DONE = b"D"  # a payload's result is written
_TERM = b"T"  # the batch system wants us gone
#: Threads that judge ended payloads and write their outcomes (checksums, log tarball,
#: four fsyncs each unless the job set says the reader needs none): a few, so 32 payloads
#: ending together are not written one by one on a slow shared file system, and none while
#: nothing has ended.
_WRITERS = 4


class _OneWriteHandler(logging.Handler):
    """Each log line in ONE ``write(2)`` call, so lines of many ranks sharing one batch
    log never interleave mid-line (writes up to PIPE_BUF are atomic on pipes)."""

    def __init__(self, fd: int = 2) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record).replace("\n", " | ")[:4000] + "\n").encode("utf-8", "replace")
            os.write(self.fd, data)
        except Exception:
            self.handleError(record)


def _empty_result() -> PayloadResult:
    now = time.time()
    return PayloadResult(
        exit_code=None, signal=None, cpu_seconds=0.0, max_rss=0, wall_seconds=0.0, start_time=now, end_time=now
    )


def _lazy_calibdb_opener() -> CalibOpener | None:
    """``calibdb.open_calibdb`` if the calibdb package provides it yet."""
    try:
        from calibdb import open_calibdb  # type: ignore[attr-defined]
    except ImportError:
        return None
    return open_calibdb


class NodeRun:
    """One node's share of a job set: calibration DB, payloads, results.

    ``run()`` blocks until every job has a result; ``terminate()`` may be called from a
    signal handler or any thread (it only writes one byte to a pipe).  ``resume()`` is
    what the keeper runs when the agent died: it adopts the payloads still running.
    """

    def __init__(
        self,
        jobs: list[NodeJob],
        *,
        reports_dir: str | os.PathLike[str],
        node: int = 0,
        calibdb: CalibDBSection | None = None,
        grid: GridSection | None = None,
        payload: PayloadSection | None = None,
        node_dir: Path | None = None,
        command_builder: CommandBuilder | None = None,
        checker: Checker | None = None,
        calibdb_opener: CalibOpener | str | None = "auto",
        kill_check_interval: float = 30.0,
        term_grace: float = 5.0,
        report_names: dict[str, str] | None = None,
        notify_target: notify.NotifyTarget | None = None,
        terminate_at: float | None = None,
        durable_outcomes: bool = True,
        lean_outcomes: bool = False,
    ) -> None:
        # absolute paths: the payload launches switch this process's working directory for a moment
        # (compass_pilot.payload.spawn), and the result writers run meanwhile
        self.jobs = [replace(nj, workdir=os.path.abspath(nj.workdir)) for nj in jobs]
        self.report_names = jobfiles.names_from(report_names or {})
        self.durable_outcomes = durable_outcomes  # JobSet.durable_outcomes: who reads the files decides
        self.lean_outcomes = lean_outcomes  # JobSet.lean_outcomes: the attributes file alone
        self.reports_dir = Path(os.path.abspath(reports_dir))
        self.node = node
        self.calibdb_cfg = calibdb
        self.grid = grid or GridSection()
        self.payload = payload or PayloadSection()  # what may run: only the demo without a site config
        self.node_dir = node_dir
        self.command_builder = command_builder or compass.payload_command
        self.checker = checker or compass.check_payload_output
        self.calibdb_opener = calibdb_opener  # "auto": calibdb.open_calibdb, looked up only when a DB is needed
        self.kill_check_interval = max(1.0, kill_check_interval)
        self.term_grace = term_grace
        self.terminate_at = terminate_at  # time.monotonic() of the walltime guard; None = only SIGTERM
        self.host = os.uname().nodename  # gethostname(2) on Linux, without importing socket (~4 ms)
        self.procs: dict[int, PayloadProcess] = {}
        self.left_running = False  # run() failed with payloads still running (the keeper's to finish)
        self.results: dict[int, JobOutcome] = {}
        self.done_before: set[int] = set()  # jobs that had their outcome before this run (not run again)
        self._lock = threading.Lock()
        self._rfd, self._wfd = os.pipe()
        self._terminating = False
        # the sender (socket, name lookup, HMAC) is made by the first notice, once payloads run
        self._notify_target = notify_target
        self._sender: notify.NotifySender | None = None
        self._writers: ThreadPoolExecutor | None = None

    def missing(self) -> list[int]:
        """Jobs left without an outcome: neither written by this run nor there before it.

        Judged from memory, not from the work dirs: the daemon removes a job's dir as soon as
        it has reported the outcome, long before this agent ends.
        """
        return [
            nj.panda_id
            for nj in self.jobs
            if nj.panda_id not in self.done_before and self.results.get(nj.panda_id) is None
        ]

    @property
    def terminated(self) -> bool:
        """The batch system (or the walltime guard) ended the payloads before they were done."""
        return self._terminating

    # -- called from anywhere ---------------------------------------------------------
    def terminate(self) -> None:
        """Ask the run to kill its payloads (batch time limit); async-signal safe."""
        try:
            os.write(self._wfd, _TERM)
        except OSError:
            pass

    # -- results ---------------------------------------------------------------------
    def has_outcome(self, nj: NodeJob) -> bool:
        return jobfiles.has_outcome(nj.workdir, self.report_names)

    def _notify(self, kind: str, panda_ids: list[int]) -> None:
        """Wake the daemon (a hint: it reads the files either way)."""
        if self._notify_target is None or not panda_ids:
            return
        sender = self._sender
        if sender is None:  # the first notice: after the launches, or a writer thread's
            with self._lock:
                if self._sender is None:
                    self._sender = notify.NotifySender(self._notify_target)
                sender = self._sender
        sender.send(kind, panda_ids)

    def _outputs(
        self, nj: NodeJob, stdout: str, verdict: tuple[int, str] | None
    ) -> tuple[list[OutputFile], tuple[int, str] | None]:
        """The files to stage out (outputs only when the payload succeeded, the log always).

        A declared output the payload did not produce fails the job here (1165), so
        Harvester, which stages out only what is listed, cannot report it finished.
        """
        workdir = Path(nj.workdir)
        files: list[OutputFile] = []
        # size and adler32 are taken here (OutputFile.of), where the data was just written (in the page
        # cache, and on every node at once): the daemon stages out with them instead of reading each output
        if verdict is None:
            per_file = compass.output_events(nj.job, stdout)
            for spec in nj.job.output_files:
                local = workdir / spec.lfn
                if not local.is_file():
                    return self._outputs(nj, stdout, (ErrorCode.MISSING_OUTPUT, f"output {spec.lfn} was not produced"))
                files.append(OutputFile.of(local, "output", spec.guid or new_guid(), per_file.get(spec.lfn)))
        if nj.job.log_file is not None:
            from compass_pilot.logpack import pack_log  # tarfile only once a job has ended

            packed = pack_log(nj.job, workdir)
            if packed is not None:
                files.append(OutputFile.of(packed, "log", nj.job.log_file.guid or new_guid()))
        return files, verdict

    def _write_result(
        self,
        nj: NodeJob,
        result: PayloadResult,
        verdict: tuple[int, str] | None,
        n_events: int | None,
        stdout: str = "",
    ) -> None:
        with self._lock:
            if nj.panda_id in self.results:  # exactly one result per job, whatever races
                return
            self.results[nj.panda_id] = None  # type: ignore[assignment]  # claimed
        try:
            outputs, verdict = self._outputs(nj, stdout, verdict)
        except OSError as exc:  # an unreadable output: the job cannot be finished
            outputs, verdict = [], (ErrorCode.STAGE_OUT_FAILED, f"cannot read the outputs: {exc}")
        code, diag = verdict if verdict else (0, "")
        outcome = JobOutcome(
            panda_id=nj.panda_id,
            attempt_nr=nj.job.attempt_nr,
            status="failed" if verdict else "finished",
            error_code=code,
            error_diag=diag[:500],
            trans_exit_code=result.exit_code,
            n_events=n_events,
            cpu_seconds=result.cpu_seconds,
            max_rss_kb=result.max_rss // 1024 if result.max_rss else None,
            start_time=result.start_time,
            end_time=result.end_time,
            core_count=nj.job.core_count,
            node=self.host,
            outputs=outputs,
        )
        jobfiles.write_outcome(
            nj.workdir, outcome, self.report_names, durable=self.durable_outcomes, lean=self.lean_outcomes
        )
        self.results[nj.panda_id] = outcome
        self._notify(notify.ENDED, [nj.panda_id])
        if verdict:
            log.warning("job %d slot %d: failed %d: %s", nj.panda_id, nj.slot, code, diag)
        else:
            log.info("job %d slot %d: payload ok (%s events)", nj.panda_id, nj.slot, n_events)

    def _fail_without_run(self, nj: NodeJob, code: int, diag: str) -> None:
        self._write_result(nj, _empty_result(), (code, diag[:500]), None)

    def _judge(self, nj: NodeJob, proc: PayloadProcess) -> None:
        """Judge one ended payload and write its result (in a writer thread); wake the loop."""
        try:
            result = proc.wait(0)
            assert result is not None
            stdout = compass.tail(proc.stdout_path)
            stderr = compass.tail(proc.stderr_path)
            try:
                verdict = self.checker(nj.job, stdout, stderr, result)
                n_events = compass.count_events(nj.job, stdout)
            except Exception as exc:  # a checker bug must still leave a result behind
                verdict, n_events = (ErrorCode.UNKNOWN_FAILURE, f"payload check failed: {exc}"), None
            self._write_result(nj, result, verdict, n_events, stdout)
        except Exception:
            log.exception("job %d: could not write its result", nj.panda_id)
        finally:
            try:
                os.write(self._wfd, _DONE)
            except OSError:
                pass

    # -- the run ---------------------------------------------------------------------
    def run(self) -> dict[int, JobOutcome]:
        """Start the DB, run every payload concurrently, write results, stop the DB."""
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        self.beat()
        todo = []
        for nj in self.jobs:
            if self.has_outcome(nj):
                log.info("job %d already has a result (requeued batch job?): not run again", nj.panda_id)
                self.done_before.add(nj.panda_id)
            else:
                todo.append(nj)
        db = None
        calib_env: dict[str, str] = {}
        opener = _lazy_calibdb_opener() if self.calibdb_opener == "auto" else self.calibdb_opener
        try:
            if todo and self.calibdb_cfg is not None and opener is not None:
                try:
                    db = opener(self.calibdb_cfg, node_dir=self.node_dir)  # type: ignore[operator]
                    endpoint = db.start()
                    calib_env = dict(endpoint.env)
                    log.info("node %d: calibration DB ready (%s)", self.node, endpoint.backend)
                except Exception as exc:  # any DB failure ends this node's jobs with 1244
                    diag = getattr(exc, "diag", None) or str(exc) or type(exc).__name__
                    log.error("node %d: calibration DB failed to start: %s", self.node, diag)
                    for nj in todo:
                        self._fail_without_run(nj, ErrorCode.CALIBDB_UNAVAILABLE, f"calibration DB: {diag}")
                    return self.results  # stop() below still cleans up a half-started DB
            elif todo and self.calibdb_cfg is not None:
                # TODO(calibdb): remove once calibdb.open_calibdb has landed everywhere
                log.warning("node %d: calibdb package not available: payloads run without a calibration DB", self.node)
            reaper = PayloadReaper()
            try:
                running = self._start_all(todo, calib_env, reaper)
                bug_point("agent-after-start")  # fault suite: a bug ends the agent, not its payloads
                self._loop(reaper, running)
            except BaseException:
                # a bug ends this process, not the payloads (own sessions): the keeper adopts
                # them, and they still need their calibration DB and node dir
                self.left_running = any(not proc.done.is_set() for proc in self.procs.values())
                raise
            finally:
                reaper.close()
            return self.results
        finally:
            if db is not None and self.left_running:
                log.error("node %d: the agent fails with payloads running: their calibration DB is left up", self.node)
            elif db is not None:
                try:
                    db.stop()
                except Exception as exc:
                    log.warning("node %d: calibration DB did not stop cleanly: %s", self.node, exc)
            self.close()

    def resume(
        self, adopted: dict[int, tuple[int, float]], lost: str, lost_code: int = ErrorCode.LOST_CONTACT
    ) -> dict[int, JobOutcome]:
        """Finish the run of an agent that died: ``adopted`` maps PandaID → (pid, start time)
        of its payloads still running as OUR children; every other job of the node without
        an outcome fails with ``lost_code`` (1317; 1213 when the batch system was ending the
        run anyway) and ``lost`` as the reason (its exit status is gone)."""
        reaper = PayloadReaper()
        running = 0
        try:
            for nj in self.jobs:
                # an outcome the agent wrote, or a work dir the daemon already removed after
                # taking that outcome: nothing to do (never re-create a dir with a second result)
                if self.has_outcome(nj) or not Path(nj.workdir).is_dir():
                    self.done_before.add(nj.panda_id)
                    continue
                if nj.panda_id not in adopted:
                    self._fail_without_run(nj, lost_code, lost)
                    continue
                pid, started = adopted[nj.panda_id]
                self.procs[nj.panda_id] = PayloadProcess.adopt(
                    pid,
                    Path(nj.workdir),
                    start_time=started,
                    reaper=reaper,
                    walltime=nj.job.walltime_limit,
                    grace=self.grid.payload_grace,
                    sample_interval=self.grid.sample_interval,
                )
                running += 1
                log.warning("job %d: payload pid %d adopted from the dead agent", nj.panda_id, pid)
            self._loop(reaper, running)
            return self.results
        finally:
            reaper.close()
            self.close()

    def close(self) -> None:
        """Release the wake-up pipe, the writers and the socket (``run()`` does it itself); safe to call twice."""
        if self._writers is not None:
            self._writers.shutdown(wait=True)
            self._writers = None
        self._notify_target = None  # a notice after this is dropped, as a closed sender drops it
        if self._sender is not None:
            self._sender.close()
        for fd in (self._rfd, self._wfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._rfd = self._wfd = -1

    def _start_one(self, nj: NodeJob, calib_env: dict[str, str], reaper: PayloadReaper) -> PayloadProcess | None:
        workdir = Path(nj.workdir)
        try:
            cmd, env = self.command_builder(nj.job, workdir, calib_env, self.payload)
            proc = PayloadProcess(
                cmd,
                workdir,
                env,
                walltime=nj.job.walltime_limit,
                grace=self.grid.payload_grace,
                sample_interval=self.grid.sample_interval,
                wrap=False,  # one process per payload: the keeper, not a shell, outlives the agent
            ).start(reaper)
        except PilotError as exc:
            self._fail_without_run(nj, exc.code, exc.pilot_error_diag())
            return None
        except OSError as exc:
            self._fail_without_run(nj, ErrorCode.PAYLOAD_FAILED, f"{error_message(1305)}: cannot start: {exc}")
            return None
        try:
            marker = self.reports_dir / f"{nj.panda_id}.started"  # a hint: no fsync
            atomic_write_text(marker, f"{proc.pid} {time.time():.3f} {self.host}\n", durable=False)
        except OSError as exc:  # a missing marker only delays the running heartbeat
            log.warning("job %d: cannot write the started marker: %s", nj.panda_id, exc)
        log.info("job %d slot %d: payload started pid=%s", nj.panda_id, nj.slot, proc.pid)
        return proc

    def _start_all(self, todo: list[NodeJob], calib_env: dict[str, str], reaper: PayloadReaper) -> int:
        """Start every payload, then ONE wake-up for all of them; returns how many run."""
        started = []
        for nj in todo:
            proc = self._start_one(nj, calib_env, reaper)
            if proc is not None:
                self.procs[nj.panda_id] = proc
                started.append(nj.panda_id)
        self._notify(notify.STARTED, started)
        return len(started)

    def beat(self) -> None:
        """Touch ``<reports>/agent-<node>.alive``: its mtime tells the daemon this node still lives."""
        try:
            (self.reports_dir / f"agent-{self.node}.alive").touch()
        except OSError as exc:
            log.warning("node %d: cannot write the agent heartbeat: %s", self.node, exc)

    def _check_kills(self) -> None:
        """Server kill requests arrive as files from the daemon; checked at its poll interval (and a beat)."""
        self.beat()
        for panda_id, proc in list(self.procs.items()):
            if not proc.done.is_set() and (self.reports_dir / f"{panda_id}.kill").exists():
                log.warning("job %d: killed on the server's request", panda_id)
                proc.kill("server")

    def _kill_all(self, why: str) -> None:
        if self._terminating:
            return
        self._terminating = True
        live = [proc for proc in self.procs.values() if not proc.done.is_set()]
        log.warning("node %d: %s: killing %d payload(s) (batch time limit)", self.node, why, len(live))
        for proc in live:
            proc.kill("batch", grace=self.term_grace)

    def _loop(self, reaper: PayloadReaper, running: int) -> None:
        """Until every started payload has ended and its result is written: one thread, no polling."""
        if not running:
            return
        job_of = {proc.pid: self._job(panda_id) for panda_id, proc in self.procs.items()}
        reaper.watch(self._rfd, "wake")
        written = 0
        next_check = time.monotonic() + self.kill_check_interval
        while written < running:
            now = time.monotonic()
            timeout = next_check - now
            if self.terminate_at is not None and not self._terminating:
                timeout = min(timeout, self.terminate_at - now)
            ended, ready = reaper.wait(max(0.0, timeout))
            for proc in ended:
                nj = job_of[proc.pid]
                if self._writers is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._writers = ThreadPoolExecutor(_WRITERS, thread_name_prefix=f"results-{self.node}")
                self._writers.submit(self._judge, nj, proc)
            if ready:
                data = os.read(self._rfd, 4096)
                written += data.count(_DONE)
                if _TERM in data:
                    self._kill_all("SIGTERM")
            now = time.monotonic()
            if self.terminate_at is not None and now >= self.terminate_at:
                self._kill_all("walltime guard")
            if now >= next_check:
                self._check_kills()
                next_check = now + self.kill_check_interval

    def _job(self, panda_id: int) -> NodeJob:
        return next(nj for nj in self.jobs if nj.panda_id == panda_id)


def run_node(jobs: list[NodeJob], **kwargs: Any) -> dict[int, JobOutcome]:
    """Run one node's jobs to the end (see :class:`NodeRun` for the keywords); no MPI."""
    return NodeRun(jobs, **kwargs).run()


def orphan_results(jobset: JobSet, ranks: int) -> None:
    """Nodes without a rank (fewer ranks than nodes): fail their jobs now, not at batch end."""
    for node in range(ranks, jobset.nodes):
        run = NodeRun(jobset.jobs_of(node), reports_dir=jobset.reports_dir, node=node, report_names=jobset.report_files)
        try:
            for nj in run.jobs:
                if not run.has_outcome(nj):
                    run._fail_without_run(nj, ErrorCode.GENERAL, f"no MPI rank was started for node {node}")
        finally:
            run.close()


def _rank_and_size() -> tuple[int, int]:
    """This agent's node index and the number of agents.

    The launcher says it in the environment, so no MPI_Init is needed: hydra's mpiexec
    (MPICH) sets ``PMI_RANK`` / ``PMI_SIZE``, srun sets ``SLURM_PROCID`` /
    ``SLURM_STEP_NUM_TASKS``.  Skipping MPI_Init saves each agent ~0.1 s of CPU and the
    collective start-up wait, and a node that dies before initialising cannot hold the
    others in it.  (Under srun, MPI_Init would even be wrong: without a matching
    ``--mpi`` plugin every task is a singleton rank 0.)  Elsewhere — aprun, or
    ``COMPASS_AGENT_RANK_FROM=mpi`` — mpi4py's COMM_WORLD tells.
    """
    env = os.environ
    if env.get("COMPASS_AGENT_RANK_FROM", "launcher") != "mpi":
        if "PMI_RANK" in env and "PMI_SIZE" in env:
            return int(env["PMI_RANK"]), int(env["PMI_SIZE"])
        if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
            return int(env["SLURM_PROCID"]), int(env.get("SLURM_STEP_NUM_TASKS", env["SLURM_NTASKS"]))
    import mpi4py

    # No MPI_Finalize at exit: it is collective, and a rank whose neighbour node died
    # would block in it forever instead of exiting with its results written.
    mpi4py.rc.finalize = False
    from mpi4py import MPI  # imported here: the rest of the module works without MPI

    comm = MPI.COMM_WORLD
    return comm.Get_rank(), comm.Get_size()


def _close_inherited_on_exec() -> None:
    """Mark every descriptor above stderr that this process inherited close-on-exec.

    Payloads are started with ``posix_spawn``, which (unlike ``Popen``) closes nothing:
    Python's own descriptors are close-on-exec already, but what the launcher passed down
    (hydra's PMI socket, a batch shell's descriptors) would otherwise leak into all 32
    payloads and outlive this agent in them.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:  # the listing's own descriptor, already closed
                pass


def _setup_logging(rank: int | str, role: str = "node_agent") -> None:
    handler = _OneWriteHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s {role}[{rank}] %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def _guard_deadline(args: Any, jobset: JobSet, started: float) -> float | None:
    """When the walltime guard ends the payloads (``time.monotonic()``), None when off.

    Batch systems SIGKILL a few seconds after SIGTERM (Torque's kill_delay is 2 s): too
    little for 32 payloads to end and report.  Ending them a little before the walltime
    leaves every job a 1213 result instead of no result at all.  At most a tenth of the
    walltime, so a short test or demo walltime is not eaten whole.
    """
    if args.walltime_guard <= 0:
        return None
    lead = min(args.walltime_guard, jobset.walltime / 10)
    return started + max(0.0, jobset.walltime - lead)


def main(argv: list[str] | None = None) -> int:
    import argparse  # here: ~5 ms an importer of this module need not pay

    parser = argparse.ArgumentParser(prog="python -m hpc.node_agent", description=__doc__.splitlines()[0])
    parser.add_argument("--jobset", required=True, help="job set file written by the MOM-node daemon")
    parser.add_argument("--fake-nodes", action="store_true", help="one host plays several nodes (tests, demo)")
    parser.add_argument("--term-grace", type=float, default=5.0, help="SIGTERM → SIGKILL grace for payloads")
    parser.add_argument(
        "--walltime-guard",
        type=float,
        default=120.0,
        help="end the payloads this long (at most walltime/10) before the job set's walltime (0 = only SIGTERM)",
    )
    parser.add_argument(
        "--jobset-wait",
        type=float,
        default=0.0,
        help="seconds to wait for a job set not written yet (the daemon submits while it stages in; 0 = none)",
    )
    parser.add_argument(
        "--no-keeper",
        dest="keeper",
        action="store_false",
        help="no keeper process: payload exit codes die with the agent (debugging only)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    tell: Callable[[str], None] = lambda info: None  # noqa: E731
    # COMPASS_AGENT_KEEPER=off: for a launcher or MPI library that must have the agent
    # itself as the process it started (the job set's command line is the daemon's)
    if args.keeper and os.environ.get("COMPASS_AGENT_KEEPER", "on") != "off":
        # first, while this process has no thread: fork is safe
        from hpc.keeper import fork_keeper

        tell = fork_keeper(lambda info, status, terminated: _take_over(args, started, info, status, terminated))

    _close_inherited_on_exec()
    rank, size = _rank_and_size()
    tell(f"{rank} {size}")
    _setup_logging(rank)
    if args.jobset_wait > 0 and not os.path.exists(args.jobset):
        from hpc.waitfile import wait_for_file

        log.info(
            "waiting up to %g s for the job set %s (its inputs are being staged in)", args.jobset_wait, args.jobset
        )
        if not wait_for_file(args.jobset, args.jobset_wait):
            log.error(
                "no job set %s after %g s: nothing to run (the daemon fails its jobs)", args.jobset, args.jobset_wait
            )
            return ExitCode.USAGE
    orphaned = False
    try:
        jobset = read_jobset(args.jobset, only_node=rank)  # this node's specs only
        if rank == 0 and size < jobset.nodes:
            log.error("%d rank(s) for %d nodes: failing the jobs of nodes %d..", size, jobset.nodes, size)
            orphan_results(read_jobset(args.jobset), size)
            orphaned = True
    except ValueError as exc:
        log.error("%s", exc)
        return ExitCode.USAGE
    node = rank
    if node >= jobset.nodes:
        log.info("rank %d has no node in this job set (%d nodes): nothing to do", rank, jobset.nodes)
        return ExitCode.OK
    node_dir = None
    if args.fake_nodes:
        import tempfile

        # several fake nodes share one host: give each its own "node-local" DB directory
        base = Path(expand(jobset.calibdb.scratch_dir))
        base.mkdir(parents=True, exist_ok=True)
        node_dir = Path(tempfile.mkdtemp(prefix=f"compass-node{node}-", dir=base))
    run = _node_run(jobset, node, args, started, node_dir)
    signal.signal(signal.SIGTERM, lambda signum, frame: run.terminate())
    log.info("node %d: %d job(s) on host %s", node, len(run.jobs), run.host)
    try:
        results = run.run()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if node_dir is not None and not run.left_running:
            import shutil

            shutil.rmtree(node_dir, ignore_errors=True)
    return _exit_code(run, results, orphaned)


def _node_run(jobset: JobSet, node: int, args: Any, started: float, node_dir: Path | None = None) -> NodeRun:
    """The run of ``node``'s jobs as the job set and the command line say: the agent's and the keeper's alike."""
    return NodeRun(
        jobset.jobs_of(node),
        reports_dir=jobset.reports_dir,
        node=node,
        calibdb=jobset.calibdb,
        grid=jobset.grid,
        payload=jobset.payload,
        node_dir=node_dir,
        kill_check_interval=jobset.kill_check_interval,
        term_grace=args.term_grace,
        report_names=jobset.report_files,
        notify_target=jobset.notify,
        terminate_at=_guard_deadline(args, jobset, started),
        durable_outcomes=jobset.durable_outcomes,
        lean_outcomes=jobset.lean_outcomes,
    )


def _take_over(args: Any, started: float, info: str | None, status: int, terminated: bool) -> int:
    """The keeper's part when the agent died (``status``: -N signal N, N > 0 an error exit
    that left payloads running): finish its node's jobs truthfully.

    The payloads still running are now the keeper's children (it is their subreaper):
    it waits for them and judges them exactly as the agent would have; a job whose
    payload the agent had already reaped, or never started, fails with 1317.
    """
    from hpc import keeper

    signum = -status if status < 0 else 0
    how = f"signal {signum}" if signum else f"exit {status}"
    try:
        rank, size = (int(word) for word in (info or "").split())
    except ValueError:
        _setup_logging("?", "node_keeper")
        log.error("the node agent died (%s) before it knew its node: its jobs are left to the daemon", how)
        return ExitCode.FAILURE
    _setup_logging(rank, "node_keeper")
    try:
        jobset = read_jobset(args.jobset, only_node=rank)
    except ValueError as exc:
        log.error("%s", exc)
        return ExitCode.USAGE
    if rank >= jobset.nodes:
        return ExitCode.OK
    run = _node_run(jobset, rank, args, started)
    adopted: dict[int, tuple[int, float]] = {}
    for nj in run.jobs:
        try:
            pid, when, host = (Path(jobset.reports_dir) / f"{nj.panda_id}.started").read_text().split()[:3]
            if host == run.host and keeper.is_our_child(int(pid)):
                adopted[nj.panda_id] = (int(pid), float(when))
        except (OSError, ValueError):
            continue
    log.error(
        "node %d: the node agent died (%s): the keeper waits for its %d running payload(s)",
        rank,
        how,
        len(adopted),
    )
    signal.signal(signal.SIGTERM, lambda s, f: run.terminate())
    if terminated:
        run.terminate()
    try:
        # SIGTERM (the batch system's end) killed the agent before its handler was set: the
        # jobs it could not finish end as the batch limit ends them, not as a lost node
        ending = terminated or signum == signal.SIGTERM
        results = run.resume(
            adopted,
            f"the node agent died ({how}): the payload's exit status is lost",
            ErrorCode.BATCH_TIME_LIMIT if ending else ErrorCode.LOST_CONTACT,
        )
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for pid in keeper.leftover_children():  # what else the agent left (its calibration DB server)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return _exit_code(run, results, rank == 0 and size < jobset.nodes)


def _exit_code(run: NodeRun, results: dict[int, JobOutcome], orphaned: bool) -> int:
    """What the worker wrapper records for this rank: see the module docstring."""
    node = run.node
    failed = sum(1 for r in results.values() if r is not None and r.status == "failed")
    missing = run.missing()
    log.info("node %d: done, %d result(s), %d failed", node, len(results), failed)
    if missing:
        log.error("node %d: %d job(s) without an outcome: %s", node, len(missing), missing[:10])
        return ExitCode.FAILURE
    if run.terminated:
        log.error("node %d: ended by the batch system (time limit): every job has a 1213 outcome", node)
        return ExitCode.INTERRUPTED_SIGTERM
    if orphaned:
        return ExitCode.FAILURE
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
