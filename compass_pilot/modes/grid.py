"""Grid mode: one pilot, one job at a time, every state reported to PanDA.

getJob → ``starting`` → stage-in → ``running`` (heartbeats) → ``transferring`` →
``finished`` / ``failed`` with a pilot error code and diagnostic; then the next job,
up to ``grid.max_jobs`` or until the server has none.  The pilot sleeps in
``Event.wait`` between heartbeats: a grid pilot costs no CPU while its payload runs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compass_pilot import lifecycle
from compass_pilot.bulk import StatusUpdater
from compass_pilot.config import SiteConfig
from compass_pilot.errors import BadJobSpec, ErrorCode, PilotError, ServerError
from compass_pilot.experiment import compass
from compass_pilot.faults import crash_point
from compass_pilot.job import JobReport, JobSpec, failed_report, panda_id_of, utc_timestamp
from compass_pilot.journal import Journal, journal_path
from compass_pilot.looping import LoopingWatchdog
from compass_pilot.panda.client import make_pilot_id
from compass_pilot.payload import PayloadProcess, PayloadResult

log = logging.getLogger(__name__)


@dataclass
class GridSummary:
    """What one pilot run did (printed by the CLI, read by the demo and tests)."""

    jobs: dict[int, str] = field(default_factory=dict)  # PandaID → final state sent
    codes: dict[int, int] = field(default_factory=dict)  # PandaID → pilot error code
    unacknowledged: list[int] = field(default_factory=list)
    preflight_error: str = ""  # why no job was asked for ("" = preflight passed)
    exit_code: int = 0  # the preflight's exit code (compass_pilot.exitcodes) when it failed
    server_error: ServerError | None = None  # why the pilot stopped asking for jobs, if the server failed

    @property
    def failed(self) -> int:
        return sum(1 for s in self.jobs.values() if s == "failed")

    @property
    def finished(self) -> int:
        return sum(1 for s in self.jobs.values() if s == "finished")


class GridPilot:
    """A pilot-factory pilot: fetch, run and report jobs one after another."""

    def __init__(
        self,
        site: SiteConfig,
        client: Any,
        *,
        stop_event: threading.Event | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.site = site
        self.client = client
        self.journal = journal or Journal.claim(journal_path(site))
        self.updater = StatusUpdater(client, self.journal)
        self.stop_event = stop_event or threading.Event()
        self.node = socket.gethostname()
        self.pilot_id = make_pilot_id("grid", getattr(site.site, "version_tag", "") or "PR")
        self.summary = GridSummary()
        self._calibdb: Any = None
        self._calib_env: dict[str, str] | None = None
        self._copytool: Any = None
        self._current: PayloadProcess | None = None
        self._stop_r, self._stop_w = os.pipe()
        threading.Thread(target=self._stopper, name="pilot-stop", daemon=True).start()

    def stop(self) -> None:
        """Ask the pilot to stop (SIGTERM from the batch system or the factory): kill the payload now.

        Signal-safe: it only writes a byte down a pipe.  A small thread blocked on that pipe
        sets the stop event and kills the payload — work that takes locks, which a signal
        handler must not (it may have interrupted the very thread holding one).
        """
        try:
            os.write(self._stop_w, b"!")
        except OSError:  # already asked (pipe full) or pilot over (closed)
            pass

    def _stopper(self) -> None:
        """Turns the stop byte into the stop event and the payload's kill (on its own thread)."""
        try:
            data = os.read(self._stop_r, 1)
        except OSError:
            data = b""
        finally:
            os.close(self._stop_r)
        if not data:  # the pilot closed the pipe: no stop was asked
            return
        self.stop_event.set()
        current = self._current
        if current is not None:
            current.kill("pilot")

    # -- plumbing ------------------------------------------------------------------------
    @property
    def copytool(self) -> Any:
        if self._copytool is None:
            from compass_pilot.copytools import make_copytool

            self._copytool = make_copytool(self.site.storage)
        return self._copytool

    def calib_env(self) -> dict[str, str]:
        """Start (or join) the node's calibration DB once per pilot, lazily."""
        if self._calib_env is None:
            from calibdb import open_calibdb

            self._calibdb = open_calibdb(self.site.calibdb)
            self._calib_env = dict(self._calibdb.start().env)
        return self._calib_env

    def close(self) -> None:
        fd, self._stop_w = self._stop_w, -1  # a late signal writes nowhere
        if fd >= 0:
            os.close(fd)  # EOF: the stopper thread ends
        self.journal.close()
        if self._calibdb is not None:
            try:
                self._calibdb.stop()
            except Exception as exc:  # the DB going down at exit must not hide the jobs' results
                log.warning("calibration DB stop failed: %s", exc)
            self._calibdb = None

    def _send(self, report: JobReport) -> str | None:
        """Report one state through the journal and the status updater; returns the server's command.

        An intermediate update that cannot be delivered stays pending (coalesced with the
        next one); a final state is retried until PanDA acknowledges it.
        """
        report.node = report.node or self.node
        report.pilot_id = report.pilot_id or self.pilot_id
        report.site_name = report.site_name or self.site.site.name
        self.updater.queue(report)
        commands = self.updater.flush()
        if report.is_final:
            self._drain_finals()
            if self.journal.final_acked(report.panda_id, report.attempt_nr):
                self.summary.jobs[report.panda_id] = report.state
                self.summary.codes[report.panda_id] = report.pilot_error_code or 0
        return commands.get(report.panda_id)

    def _drain_finals(self) -> None:
        """Flush until no final state is pending (pilot3 gives up after 3 h without contact)."""
        delay = self.site.panda.backoff
        deadline = time.time() + 3 * 3600
        while self.updater.pending_finals():
            if time.time() > deadline or self.stop_event.is_set():
                log.error(
                    "%d final state(s) NOT acknowledged; they stay in the journal for the next pilot",
                    self.updater.pending_finals(),
                )
                self.summary.unacknowledged.extend(r.panda_id for r in self.journal.pending_reports() if r.is_final)
                return
            log.warning("final update not acknowledged yet, retrying in %.0f s", delay)
            self.stop_event.wait(delay)
            delay = min(delay * 2, self.site.panda.backoff_max)
            self.updater.flush()

    # -- recovery after a restart --------------------------------------------------------
    def recover(self) -> None:
        """Re-send what the journal still owes PanDA; adopt or settle jobs a dead pilot left."""
        for report in self.journal.pending_reports():
            self.updater.queue(report)
        self.updater.settle_owed_finals()  # finals whose ack a crash lost are not sent twice
        for entry in self.journal.unfinished_jobs():
            if entry.mode == "grid":
                self._recover_job(entry)
        if self.updater.pending():
            self.updater.flush()
            self._drain_finals()

    def _recover_job(self, entry: Any) -> None:
        from compass_pilot.payload import read_exitcode
        from compass_pilot.recovery import find_payload, find_payload_in, result_from_exitcode, wait_for_pid

        try:
            job = JobSpec.from_panda(entry.spec)
        except BadJobSpec as exc:
            self._send(failed_report(entry.panda_id, entry.attempt_nr, exc.code, exc.pilot_error_diag()))
            return
        workdir = Path(entry.workdir) if entry.workdir else lifecycle.job_workdir(self.site, job)
        alive = find_payload(entry.pid, entry.create_time) if entry.pid else None
        if alive is None and not entry.pid and workdir.is_dir():
            alive = find_payload_in(workdir)  # killed between the payload's start and its pid's journaling
        if alive is not None:
            log.warning("job %d: adopting payload pid %d left by a previous pilot", job.panda_id, alive.pid)
            while not wait_for_pid(alive.pid, self.site.grid.heartbeat_interval):
                if self.stop_event.is_set():
                    return
                self._send(JobReport(job.panda_id, "running", job.attempt_nr, core_count=job.core_count))
        code = read_exitcode(workdir)
        if code is None:
            what = "before its payload started" if not entry.pid else "and its payload died without an exit status"
            self._send(
                failed_report(
                    job.panda_id,
                    job.attempt_nr,
                    ErrorCode.LOST_CONTACT,
                    f"the pilot was restarted {what}",
                    core_count=job.core_count,
                )
            )
            return
        log.warning("job %d: payload ended with %d while the pilot was down: finishing it", job.panda_id, code)
        self._send(JobReport(job.panda_id, "transferring", job.attempt_nr, core_count=job.core_count))
        report = lifecycle.finish_job(job, workdir, result_from_exitcode(code), self.site, self.copytool)
        self._send(report)
        if report.state == "finished":
            lifecycle.clean_workdir(workdir)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> GridSummary:
        """Run jobs until max_jobs, no more jobs, or a stop request."""
        limit = self.site.grid.max_jobs
        done = 0
        try:
            self.recover()
            if not self._preflight():
                return self.summary
            while not self.stop_event.is_set() and (limit == 0 or done < limit):
                t0 = time.time()
                try:
                    jobs = self.client.get_jobs(1)
                except ServerError as exc:
                    log.error("cannot get a job: %s", exc)
                    self.summary.server_error = exc
                    break
                if not jobs:
                    log.info("no jobs from the server: pilot done")
                    break
                done += 1
                self.run_job_dict(jobs[0], getjob_seconds=time.time() - t0)
        finally:
            self.close()
        return self.summary

    def _preflight(self) -> bool:
        """Work dir and proxy before a getJob: a pilot that could not run a job takes none."""
        from compass_pilot.preflight import PreflightError, check_grid

        try:
            check_grid(self.site)
        except PreflightError as exc:
            log.error("preflight failed, asking for no job: %s", exc)
            self.summary.preflight_error = str(exc)
            self.summary.exit_code = int(exc.exit_code)
            return False
        return True

    def run_job_dict(self, data: Any, getjob_seconds: float = 0.0) -> None:
        """Validate one job dict and run it; a bad spec is failed with a code, not a crash."""
        try:
            job = JobSpec.from_panda(data)
        except BadJobSpec as exc:
            panda_id = exc.panda_id or panda_id_of(data)
            log.error("bad job spec: %s", exc.diag)
            if panda_id is not None:
                attempt = data.get("attemptNr", 0) if isinstance(data, dict) else 0
                try:
                    attempt = int(attempt)
                except (TypeError, ValueError):
                    attempt = 0
                self._send(failed_report(panda_id, attempt, exc.code, exc.pilot_error_diag()))
            return
        self.run_job(job, getjob_seconds)

    def run_job(self, job: JobSpec, getjob_seconds: float = 0.0) -> JobReport:
        """The whole lifecycle of one job on this node."""
        timing = lifecycle.Timing(getjob=getjob_seconds)
        start = utc_timestamp()
        base = {"start_time": start, "core_count": job.core_count}
        self.journal.job_started(job, str(lifecycle.job_workdir(self.site, job)), mode="grid")
        self._send(JobReport(job.panda_id, "starting", job.attempt_nr, **base))
        try:
            setup_start = time.time()
            calib_env = self.calib_env()
            timing.setup = time.time() - setup_start
            workdir = lifecycle.prepare_job(job, self.site, self.copytool, timing)
            cmd, env = compass.payload_command(job, workdir, calib_env, self.site.payload)
        except PilotError as exc:
            log.error("job %d: %s", job.panda_id, exc.pilot_error_diag())
            report = failed_report(job.panda_id, job.attempt_nr, exc.code, exc.pilot_error_diag(), **base)
            report.pilot_timing = timing.pilot_timing()
            self._send(report)
            return report
        self._send(JobReport(job.panda_id, "running", job.attempt_nr, **base))
        try:
            result = self._run_payload(job, workdir, cmd, env)
        except OSError as exc:
            report = failed_report(
                job.panda_id, job.attempt_nr, ErrorCode.PAYLOAD_FAILED, f"cannot start payload: {exc}", **base
            )
            self._send(report)
            return report
        self._send(JobReport(job.panda_id, "transferring", job.attempt_nr, **base))
        report = lifecycle.finish_job(job, workdir, result, self.site, self.copytool, timing)
        report.start_time = start
        self._send(report)
        if report.state == "finished":
            lifecycle.clean_workdir(workdir)
        return report

    def _run_payload(self, job: JobSpec, workdir: Path, cmd: list[str] | str, env: dict[str, str]) -> PayloadResult:
        grid = self.site.grid
        proc = PayloadProcess(
            cmd,
            workdir,
            env,
            walltime=job.walltime_limit,
            grace=grid.payload_grace,
            sample_interval=grid.sample_interval,
            stdout_name=lifecycle.STDOUT_NAME,
            stderr_name=lifecycle.STDERR_NAME,
        ).start()
        crash_point("grid-after-payload-start")  # the payload runs; its pid is not journaled yet
        self.journal.payload_started(job.panda_id, job.attempt_nr, proc.pid or 0, proc.create_time)
        LoopingWatchdog(proc, grid.looping_timeout).start()  # off when 0
        launched = time.time()
        self._current = proc
        if self.stop_event.is_set():
            proc.kill("pilot")
        while not proc.done.wait(grid.heartbeat_interval):
            sample = proc.sample()
            beat = JobReport(
                job.panda_id,
                "running",
                job.attempt_nr,
                core_count=job.core_count,
                cpu_consumption_time=round(sample.get("cpu_seconds", 0)),
                max_rss=int(sample.get("max_rss", 0)) // 1024 or None,
            )
            command = self._send(beat)
            log.info(  # the long work's progress line, once per heartbeat
                "job %d: running %.0f min, CPU %.0f min, RSS %.0f MB; next heartbeat in %.0f s",
                job.panda_id,
                (time.time() - launched) / 60,
                sample.get("cpu_seconds", 0) / 60,
                sample.get("rss", 0) / 1e6,
                grid.heartbeat_interval,
            )
            if command in ("tobekilled", "softkill"):
                log.warning("job %d: server says %s: killing the payload", job.panda_id, command)
                proc.kill("server")
        result = proc.wait()
        self._current = None
        assert result is not None
        return result
