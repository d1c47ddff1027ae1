"""The one job lifecycle both modes share: spec → stage-in → run → outputs → stage-out → report.

Grid mode runs every step on the worker node.  Multi-job mode splits it: the MOM-node
daemon calls :func:`prepare_job` and :func:`finish_job`, the node agent runs the payload
in between.  Neither mode has its own copy of a step: the report a job ends with is
built here and only here.
"""

from __future__ import annotations

import errno
import logging
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from compass_pilot.config import SiteConfig, expand
from compass_pilot.errors import ErrorCode, PilotError, StageOutError
from compass_pilot.experiment import compass
from compass_pilot.job import JobReport, JobSpec, OutputFileReport, failed_report, new_guid, utc_timestamp
from compass_pilot.logpack import STDERR_NAME, STDOUT_NAME
from compass_pilot.logpack import pack_log as _pack_log  # the node agent packs with it too
from compass_pilot.payload import PayloadResult

log = logging.getLogger(__name__)


@dataclass
class Timing:
    """Seconds spent per step, sent as pilotTiming ``getjob|stagein|payload|stageout|initsetup|setup``."""

    getjob: float = 0.0
    stagein: float = 0.0
    payload: float = 0.0
    stageout: float = 0.0
    initsetup: float = 0.0
    setup: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)

    def pilot_timing(self) -> str:
        return "|".join(
            str(round(v)) for v in (self.getjob, self.stagein, self.payload, self.stageout, self.initsetup, self.setup)
        )


def job_workdir(site: SiteConfig, job: JobSpec) -> Path:
    """``<workdir>/PandaJob_<PandaID>_<attempt>``: a new attempt never reuses an old dir."""
    return Path(expand(site.site.workdir)) / f"PandaJob_{job.panda_id}_{job.attempt_nr}"


def prepare_job(job: JobSpec, site: SiteConfig, copytool: object, timing: Timing | None = None) -> Path:
    """Create the job's work dir and stage its inputs in; raises PilotError with the right code."""
    start = time.time()
    workdir = job_workdir(site, job)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        code = ErrorCode.NO_LOCAL_SPACE if exc.errno == errno.ENOSPC else ErrorCode.GENERAL
        raise PilotError(f"cannot create work dir {workdir}: {exc.strerror}", code) from None
    need = sum(spec.fsize for spec in job.input_files)
    free = shutil.disk_usage(workdir).free
    if need and free < need:
        raise PilotError(f"inputs need {need} bytes, {free} free in {workdir}", ErrorCode.NO_LOCAL_SPACE)
    for spec in job.input_files:
        src = compass.input_src_path(job, spec)
        copytool.stage_in(spec, src, workdir)  # type: ignore[attr-defined]
    if timing is not None:
        timing.stagein = time.time() - start
    return workdir


def _pack_log_unless(packed: bool, job: JobSpec, workdir: Path) -> None:
    """Pack the log, unless it was packed already and the tarball is there."""
    if not (packed and job.log_file is not None and (workdir / job.log_file.lfn).is_file()):
        _pack_log(job, workdir)


def _stage_out(
    job: JobSpec,
    workdir: Path,
    copytool: object,
    include_outputs: bool,
    known: dict[str, tuple[int, str]] | None = None,
) -> list[OutputFileReport]:
    reports = []
    specs = list(job.output_files) if include_outputs else []
    if job.log_file is not None:
        specs.append(job.log_file)
    for spec in specs:
        local = workdir / spec.lfn
        if not local.is_file():
            if spec.kind == "log":
                continue
            raise PilotError(f"output {spec.lfn} was not produced", ErrorCode.MISSING_OUTPUT)
        dest = compass.output_dest_path(job, spec)
        sums = {"known": known[spec.lfn]} if known and spec.lfn in known else {}  # the node agent's (size, adler32)
        report = copytool.stage_out(local, dest, guid=spec.guid or new_guid(), **sums)  # type: ignore[attr-defined]
        reports.append(report)
    return reports


def finish_job(
    job: JobSpec,
    workdir: Path,
    result: PayloadResult,
    site: SiteConfig,
    copytool: object,
    timing: Timing | None = None,
    verdict: tuple[int, str] | str | None = "check",
    log_packed: bool = False,
    counted: tuple[int | None, dict[str, int]] | None = None,
    known_sums: dict[str, tuple[int, str]] | None = None,
) -> JobReport:
    """Judge the payload, stage out outputs (and the log), and build the final report.

    ``verdict`` is the payload check already made elsewhere (the node agent makes it
    next to the logs); by default it is made here from the log files.  ``log_packed``:
    the node agent already packed the log tarball (it lists it in its outcome), so a
    tarball found in the work dir is staged out as it is instead of packed again.
    ``counted``: (events, {output lfn: events}) the node agent already read from the logs
    with the verdict; the logs (up to 2 × 256 KiB a job, on the MOM node's shared file
    system, for every job of a wave) are then not read again here.  ``known_sums``: {lfn:
    (size, adler32)} the node agent took where the files were written; the copytool stages
    out with them instead of reading each file for its checksum (``copytools.source_sums``).
    """
    timing = timing or Timing()
    if counted is not None and verdict != "check":
        stdout = ""
        n_events, per_file = counted
    else:
        stdout = compass.tail(workdir / STDOUT_NAME)
        stderr = compass.tail(workdir / STDERR_NAME)
        if verdict == "check":
            verdict = compass.check_payload_output(job, stdout, stderr, result)
        n_events = compass.count_events(job, stdout)
        per_file = None
    common = {
        "core_count": job.core_count,
        "cpu_consumption_time": round(result.cpu_seconds),
        "max_rss": result.max_rss // 1024 if result.max_rss else None,  # kB, as pilot3 sends it
        "start_time": utc_timestamp(result.start_time) if result.start_time else None,
        "trans_exit_code": result.exit_code if result.exit_code is not None else None,
        "exe_error_code": result.exit_code if result.exit_code not in (None, 0) else None,
    }
    timing.payload = result.wall_seconds
    start = time.time()
    if verdict is not None:
        code, diag = verdict  # type: ignore[misc]
        logs: list[OutputFileReport] = []
        _pack_log_unless(log_packed, job, workdir)
        try:
            logs = _stage_out(job, workdir, copytool, include_outputs=False, known=known_sums)
        except PilotError as exc:
            log.warning("job %d: log stage-out failed: %s", job.panda_id, exc.diag)
        timing.stageout = time.time() - start
        report = failed_report(job.panda_id, job.attempt_nr, code, diag, **common)
        report.n_events = n_events
        report.output_files = logs
        report.pilot_timing = timing.pilot_timing()
        return report
    _pack_log_unless(log_packed, job, workdir)
    try:
        files = _stage_out(job, workdir, copytool, include_outputs=True, known=known_sums)
    except PilotError as exc:
        timing.stageout = time.time() - start
        report = failed_report(job.panda_id, job.attempt_nr, exc.code, exc.diag, **common)
        report.pilot_timing = timing.pilot_timing()
        report.n_events = n_events
        return report
    except OSError as exc:
        code = ErrorCode.NO_LOCAL_SPACE if exc.errno == errno.ENOSPC else ErrorCode.STAGE_OUT_FAILED
        err = StageOutError(f"stage-out failed: {exc}", code)
        return failed_report(job.panda_id, job.attempt_nr, err.code, err.diag, **common)
    timing.stageout = time.time() - start
    if per_file is None:
        per_file = compass.output_events(job, stdout)
    files = [OutputFileReport(f.lfn, f.guid, f.fsize, f.adler32, f.surl, per_file.get(f.lfn)) for f in files]
    return JobReport(
        panda_id=job.panda_id,
        state="finished",
        attempt_nr=job.attempt_nr,
        n_events=n_events,
        end_time=utc_timestamp(),
        pilot_error_code=0,
        pilot_timing=timing.pilot_timing(),
        job_metrics=f"coreCount={job.core_count} nEvents={n_events or 0}",
        output_files=files,
        **common,
    )


def clean_workdir(workdir: Path) -> None:
    """Remove a finished job's work dir (outputs are safe at the destination by now)."""
    shutil.rmtree(workdir, ignore_errors=True)


class WorkdirCleaner:
    """Removes finished jobs' work dirs on a thread of its own, in the order given.

    Why: removing 512 work dirs is thousands of unlinks (a second or more on a busy
    shared file system); done on the daemon's loop it delays the next burst's reports.
    Nothing waits for a removal, so the thread only sleeps on its queue; :meth:`close`
    finishes what was handed over (a daemon that exits leaves no finished dir behind).

    ``gate``: an event the owner sets while it has nothing to do.  Removals wait for it,
    so they never compete (for the CPU, the GIL, the file system's journal) with a
    burst of stage-outs — the moment the next jobs' finals are waiting for.
    """

    def __init__(self, gate: threading.Event | None = None) -> None:
        self._queue: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._gate = gate

    def remove(self, workdirs: list[Path]) -> None:
        """Queue these dirs for removal (their reports must already be durable)."""
        if not workdirs:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="workdir-cleaner", daemon=True)
            self._thread.start()
        for workdir in workdirs:
            self._queue.put(workdir)

    def _run(self) -> None:
        while (workdir := self._queue.get()) is not None:
            if self._gate is not None:
                self._gate.wait()
            clean_workdir(workdir)

    def close(self, timeout: float = 120.0) -> None:
        """Finish the queued removals (bounded), then stop the thread."""
        if self._thread is None:
            return
        if self._gate is not None:
            self._gate.set()  # the owner is done: nothing to compete with any more
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None
