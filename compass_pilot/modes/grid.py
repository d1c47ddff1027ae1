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
from compass_pilot.config import SiteConfig
from compass_pilot.errors import BadJobSpec, ErrorCode, PilotError, ServerError
from compass_pilot.experiment import compass
from compass_pilot.job import JobReport, JobSpec, failed_report, panda_id_of, utc_timestamp
from compass_pilot.payload import PayloadProcess, PayloadResult

log = logging.getLogger(__name__)


@dataclass
class GridSummary:
    """What one pilot run did (printed by the CLI, read by the demo and tests)."""

    jobs: dict[int, str] = field(default_factory=dict)  # PandaID → final state sent
    codes: dict[int, int] = field(default_factory=dict)  # PandaID → pilot error code
    unacknowledged: list[int] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return sum(1 for s in self.jobs.values() if s == "finished")


class GridPilot:
    """A pilot-factory pilot: fetch, run and report jobs one after another."""

    def __init__(self, site: SiteConfig, client: Any, *, stop_event: threading.Event | None = None) -> None:
        self.site = site
        self.client = client
        self.stop_event = stop_event or threading.Event()
        self.node = socket.gethostname()
        self.pilot_id = f"compass-grid-{os.getpid()}"
        self.summary = GridSummary()
        self._calibdb: Any = None
        self._calib_env: dict[str, str] | None = None
        self._copytool: Any = None
        self._current: PayloadProcess | None = None

    def stop(self) -> None:
        """Ask the pilot to stop (SIGTERM from the batch system or the factory): kill the payload now."""
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
        if self._calibdb is not None:
            try:
                self._calibdb.stop()
            except Exception as exc:  # the DB going down at exit must not hide the jobs' results
                log.warning("calibration DB stop failed: %s", exc)
            self._calibdb = None

    def _send(self, report: JobReport) -> Any:
        """Send one update; intermediate updates may be lost, final ones are retried."""
        report.node = report.node or self.node
        report.pilot_id = report.pilot_id or self.pilot_id
        report.site_name = report.site_name or self.site.site.name
        if not report.is_final:
            try:
                return self.client.update_job(report)
            except ServerError as exc:
                log.warning("job %d: %s update not delivered: %s", report.panda_id, report.state, exc)
                return None
        return self._send_final(report)

    def _send_final(self, report: JobReport) -> Any:
        """Deliver a final state; exactly once from this pilot's side (the server dedups retries)."""
        delay = self.site.panda.backoff
        deadline = time.time() + 3 * 3600  # pilot3 gives up after 3 h without a successful update
        while True:
            try:
                answer = self.client.update_job(report)
            except ServerError as exc:
                if time.time() > deadline or self.stop_event.is_set():
                    log.error("job %d: final state %s NOT acknowledged: %s", report.panda_id, report.state, exc)
                    self.summary.unacknowledged.append(report.panda_id)
                    return None
                log.warning("job %d: final update failed (%s), retrying in %.0f s", report.panda_id, exc, delay)
                self.stop_event.wait(delay)
                delay = min(delay * 2, self.site.panda.backoff_max)
                continue
            self.summary.jobs[report.panda_id] = report.state
            self.summary.codes[report.panda_id] = report.pilot_error_code or 0
            return answer

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> GridSummary:
        """Run jobs until max_jobs, no more jobs, or a stop request."""
        limit = self.site.grid.max_jobs
        done = 0
        try:
            while not self.stop_event.is_set() and (limit == 0 or done < limit):
                t0 = time.time()
                try:
                    jobs = self.client.get_jobs(1)
                except ServerError as exc:
                    log.error("cannot get a job: %s", exc)
                    break
                if not jobs:
                    log.info("no jobs from the server: pilot done")
                    break
                done += 1
                self.run_job_dict(jobs[0], getjob_seconds=time.time() - t0)
        finally:
            self.close()
        return self.summary

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
        self._send(JobReport(job.panda_id, "starting", job.attempt_nr, **base))
        try:
            setup_start = time.time()
            calib_env = self.calib_env()
            timing.setup = time.time() - setup_start
            workdir = lifecycle.prepare_job(job, self.site, self.copytool, timing)
            cmd, env = compass.payload_command(job, workdir, calib_env)
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
            answer = self._send(beat)
            command = getattr(answer, "command", None)
            if command in ("tobekilled", "softkill"):
                log.warning("job %d: server says %s: killing the payload", job.panda_id, command)
                proc.kill("server")
        result = proc.wait()
        self._current = None
        assert result is not None
        return result
