"""Multi-job HPC mode: the MOM-node daemon.

One daemon per MOM node replaces hundreds of per-job pilots.  Each round it:

1. fetches a job set in ONE request (:class:`~compass_pilot.bulk.JobSource`) when
   fewer than ``hpc.max_submissions`` submissions are in flight;
2. packs the jobs (``hpc.packing.plan_submissions``: ≤512 jobs, ≤16 nodes × 32 slots,
   queue by job type; a smaller submission when PanDA has fewer jobs), stages their
   inputs in (the shared :mod:`compass_pilot.lifecycle`), writes the job set and
   submits it through the batch plugins (the same Harvester plugins Harvester loads);
3. reads the node agents' per-job ``.started`` markers and result files, stages the
   outputs out and builds each job's final report with the same lifecycle code as
   grid mode;
4. reports every change in ONE bulk request (:class:`~compass_pilot.bulk.StatusUpdater`),
   and sends running heartbeats for all running jobs in that same request every
   ``hpc.heartbeat_interval``.

Between rounds it sleeps in ``select()`` for ``hpc.poll_interval`` seconds (30 s at a
real site): the daemon is idle almost all the time.  The node agents wake it with a
signed datagram when payloads start or end (:mod:`compass_pilot.modes.wakeups`); it
then reads only the named jobs' files, stages their outputs out and reports them in
one bulk request per burst, without waiting for the poll.  The poll stays the safety
net: the files are the truth, a wake-up only says where to look now.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from compass_pilot import lifecycle
from compass_pilot.atomic import atomic_write_text
from compass_pilot.bulk import JobSource, StatusUpdater
from compass_pilot.config import SiteConfig, config_to_dict, expand
from compass_pilot.errors import BadJobSpec, ErrorCode, PilotError
from compass_pilot.exitcodes import ExitCode
from compass_pilot.faults import crash_point
from compass_pilot.filemodes import check_own_dir
from compass_pilot.job import JobReport, JobSpec, failed_report, panda_id_of, utc_timestamp
from compass_pilot.journal import Journal
from compass_pilot.modes import wakeups
from compass_pilot.modes.batchgate import BackgroundPreflight, batch_check, make_backend  # noqa: F401 (re-exported)
from compass_pilot.progress import DaemonProgress
from harvester_plugins import jobfiles
from harvester_plugins.jobfiles import JobOutcome

log = logging.getLogger(__name__)

STATE_FILE = "daemon_state.json"

#: Settled submissions kept in memory (for ``status`` and tests); older ones live only on disk.
DONE_SUBMISSIONS_MEMORY = 16
#: Final states remembered per PandaID (``outcomes`` counts all of them).
FINAL_STATES_MEMORY = 4096
#: Disk and journal pruning runs this often.
PRUNE_INTERVAL = 3600.0
#: Seconds one wake-up keeps taking in the notices that arrive while it stages out (see _more_named).
INTAKE_LIMIT = 10.0
#: Jobs taken in per finished transfer at most: the jobs already out are settled between two bites.
INTAKE_BATCH = 64


class BatchBackend(Protocol):
    """How the daemon reaches the batch system (implemented on the Harvester plugins)."""

    def submit(self, submission: Any, subdir: Path, jobset: Path) -> str: ...
    def status(self, batch_id: str, subdir: Path) -> str: ...  # WorkSpec statuses
    def kill(self, batch_id: str, subdir: Path) -> None: ...

    # optional: def preflight(self) -> None — adaptor, submit command, job service; raises PreflightError
    # optional: def probe(self) -> None — the fast gate used instead of preflight when present (the
    #   batch system answers a native query; the job service opens meanwhile); raises PreflightError
    # optional: def ended(self, subdir: Path) -> bool — the batch job is over, known without asking it


@dataclass(slots=True)
class JobEntry:
    """What the daemon tracks for one job of a submission."""

    panda_id: int
    attempt_nr: int
    workdir: str
    state: str = "starting"  # starting → running → final
    started_at: float = 0.0
    final: str = ""
    node: int = -1  # the node it runs on (its agent's heartbeat file); -1 = unknown (older state files)
    host: str = ""  # the compute node's host name, from its started marker: PanDA's `node`, not the MOM node


@dataclass
class SubmissionState:
    """One batch submission in flight; persisted so `status` (and a restart) can read it."""

    sub_id: str
    queue: str
    nodes: int
    walltime: int
    subdir: str
    batch_id: str = ""
    created: float = field(default_factory=time.time)
    batch_status: str = "submitted"
    checked_at: float = field(default_factory=time.monotonic)  # last time the batch system was asked (monotonic)
    jobs: dict[str, JobEntry] = field(default_factory=dict)  # str(PandaID) → entry
    done: bool = False
    job_name: str = ""  # the batch job's unique name, persisted before it is submitted (recovery finds it)
    submit_attempts: int = 0  # failed submission attempts so far
    submit_error: str = ""  # the batch system's last refusal
    notify_key: str = ""  # the key its agents sign wake-ups with ("" = poll only); a restarted daemon re-adds it
    jobset_pending: bool = False  # submitted, stage-in still running: its job set is not written yet

    @property
    def reports_dir(self) -> Path:
        return Path(self.subdir) / "reports"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``state.json`` — what ``asdict`` gives, without its deep copy of
        every job (a 512-job submission is written on each change: 1.5 ms, not 10 ms)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["jobs"] = {key: {name: getattr(e, name) for name in JobEntry.__slots__} for key, e in self.jobs.items()}
        return data


class MultiJobDaemon:
    """The MOM-node loop; one instance per daemon process."""

    def __init__(
        self,
        site: SiteConfig,
        client: Any,
        backend: BatchBackend,
        *,
        stop_event: threading.Event | None = None,
        copytool: Any = None,
        journal: Journal | None = None,
        early_preflight: BackgroundPreflight | None = None,
    ) -> None:
        self.site = site
        self.client = client
        self.backend = backend
        self.stop_event = stop_event or threading.Event()
        self.shared = Path(expand(site.hpc.shared_dir))
        self.shared.mkdir(parents=True, exist_ok=True)
        check_own_dir(self.shared, "hpc.shared_dir")  # job sets and node reports live here: trusted only if ours
        hpc = site.hpc
        self.source = JobSource(client, backoff=hpc.no_jobs_backoff, backoff_max=hpc.no_jobs_backoff_max)
        self.journal = journal or Journal.claim(self.shared / "daemon-journal.sqlite")
        self.updater = StatusUpdater(client, self.journal)
        self.submissions: dict[str, SubmissionState] = {}
        # PandaIDs whose final this daemon owes.  Their specs are NOT kept here: the journal has
        # each one (written before the batch job exists) and a job's spec is read back when it
        # ends (_spec) — at 30 × 512 jobs the parsed specs would be most of the daemon's memory.
        self.held: set[int] = set()
        self.errors: Counter[int] = Counter()
        self.recent_errors: list[tuple[float, int, int, str]] = []
        self.final_states: dict[int, str] = {}  # PandaID → final state, the most recent FINAL_STATES_MEMORY
        self.outcomes: Counter[str] = Counter()  # final states of every job this daemon settled
        self.prune_interval = PRUNE_INTERVAL
        self._next_prune: float | None = None  # monotonic time of the next pruning (first: one interval in)
        self.progress = DaemonProgress()  # the periodic progress line and the state file's figures
        self._copytool = copytool
        self._last_heartbeat = float("-inf")  # monotonic; the first round beats
        self._seq = 0
        self.rounds = 0
        self.job_sets = 0  # job sets taken from PanDA
        # stop() / terminate() may run in a signal handler: they only set a flag and write a byte
        # to this pipe (both async-signal-safe); the loop sleeps in select() on it and acts itself
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop_requested = False
        self._term_requested = False
        self._stopping_hard = False
        self._term_deadline = 0.0  # monotonic: jobs still without a final then fail with 1201
        self._to_clean: list[Path] = []  # finished jobs' work dirs, removed after the round's commit
        self._idle = threading.Event()  # set while the loop sleeps with nothing to do (the cleaner's turn)
        self._cleaner = lifecycle.WorkdirCleaner(self._idle)  # removes them off the loop, when it is idle
        self.unhealthy = ""  # why the daemon cannot take jobs now ("" = healthy); in the state file
        self.breaker_open = False  # consecutive submission failures stopped fetching
        self._submit_failures = 0  # consecutive failed submission attempts
        self._breaker_retry = 0.0  # monotonic time the open breaker lets one job set through again
        self._abandon = False  # fail the jobs of unsubmitted submissions (breaker open under --once)
        self._plans: dict[str, Any] = {}  # sub_id → packed Submission, until the batch system took it
        self._lost_node_subs: set[str] = set()  # submissions with a node declared lost
        self._retry_at: dict[str, float] = {}  # sub_id → monotonic time of the next submission attempt
        self.exit_code: ExitCode | None = None  # set when the daemon stops for a reason of its own
        self._may_fetch = True
        self._preflight_ok = False
        self._preflight_next = 0.0  # monotonic time of the next preflight re-check
        self._preflight_wait = site.hpc.no_jobs_backoff
        self._early_preflight = early_preflight  # the backend's check, already under way (daemon_cli)
        self.listener: wakeups.NoticeReader | None = None  # opened on first need (None: poll only)
        self._notify_host = ""
        self._listener_opened = False
        self._unsaved: set[str] = set()  # submissions changed by a wake-up, persisted by the next round
        self.wakeups = 0  # bursts of notices acted on
        self._finals_batch: list[JobReport] | None = None  # finals of a stage-out chunk, queued together
        self._intake: wakeups.Burst | None = None  # notices taken in, not yet acted on (during react only)
        self._intake_until = 0.0  # monotonic: a wake-up takes in no more notices after this
        self._staging: set[int] = set()  # PandaIDs whose stage-out is under way (not read twice)

    def _open_listener(self) -> Any:
        """The wake-up listener (once per daemon); None when ``hpc.notify_bind`` is off or binding failed."""
        if not self._listener_opened:
            self._listener_opened = True
            self.listener, self._notify_host = wakeups.open_listener(self.site.hpc)
        return self.listener

    # -- plumbing ------------------------------------------------------------------------
    @property
    def copytool(self) -> Any:
        if self._copytool is None:
            from compass_pilot.copytools import make_copytool

            self._copytool = make_copytool(self.site.storage)
        return self._copytool

    def stop(self) -> None:
        """Stop fetching; finish what is in flight, report it, then exit.  Signal-safe (no lock)."""
        self._stop_requested = True
        self._poke()

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except OSError:  # pipe full (already poked) or closed (loop over)
            pass

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _wait(self, seconds: float, draining: bool) -> None:
        """Wait up to ``seconds`` for the next round; act on the agents' wake-ups meanwhile.

        Returns early for stop() / terminate() (the wake pipe), and after a wake-up that
        changed what the next round would do: the last job of a draining daemon settled,
        or a submission ended and there is room to fetch the next job set.
        """
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            fds: list[Any] = [self._wake_r] if self.listener is None else [self._wake_r, self.listener]
            self._idle.set()
            try:
                ready, _, _ = select.select(fds, [], [], left)
            except InterruptedError:
                continue
            finally:
                self._idle.clear()
            if self._wake_r in ready:
                self._drain_wake_pipe()
                return
            if self.listener is not None and self.listener in ready:
                burst = self.listener.gather(wake_fd=self._wake_r)
                if burst:
                    self.react(burst)
                    if self._round_wanted(draining):
                        return

    def _round_wanted(self, draining: bool) -> bool:
        """Whether a wake-up's changes call for a full round before the poll interval is over."""
        if draining or self.stop_event.is_set():
            return self.in_flight() == 0
        hpc = self.site.hpc
        return self._may_fetch and self.in_flight() < hpc.max_submissions and self.source.ready()

    def _act_on_requests(self) -> None:
        """What a signal asked for, done here on the daemon's thread (batch calls, locks and all)."""
        if self._stop_requested:
            self.stop_event.set()
        if self._term_requested and not self._stopping_hard:
            self._stopping_hard = True
            self.stop_event.set()
            hpc = self.site.hpc
            self._term_deadline = time.monotonic() + min(60.0, 2 * hpc.poll_interval + 5)
            for state in self.submissions.values():
                if not state.done and state.batch_id:
                    try:
                        self.backend.kill(state.batch_id, Path(state.subdir))
                    except Exception as exc:
                        log.warning("cannot kill batch job %s: %s", state.batch_id, exc)
        if self._stopping_hard:
            for state in self.submissions.values():
                state.checked_at = float("-inf")  # ask the batch system every round until all is settled
            if time.monotonic() >= self._term_deadline:
                for state in self._active():
                    for entry in state.jobs.values():
                        if not entry.final:
                            diag = "the daemon was terminated (SIGTERM) and cancelled the batch job"
                            self._finish_entry(state, entry, (ErrorCode.SIGTERM, diag))
                    state.done = True
                    self._persist(state)

    def _final(self, report: JobReport) -> None:
        self.final_states[report.panda_id] = report.state
        self.outcomes[report.state] += 1
        while len(self.final_states) > FINAL_STATES_MEMORY:  # months of jobs: keep the recent ones
            del self.final_states[next(iter(self.final_states))]
        if report.state == "failed" and report.pilot_error_code:
            self.errors[report.pilot_error_code] += 1
            self.recent_errors.append(
                (time.time(), report.panda_id, report.pilot_error_code, report.pilot_error_diag or "")
            )
            del self.recent_errors[:-20]
        report.site_name = report.site_name or self.site.site.name
        if self._finals_batch is not None:
            self._finals_batch.append(report)  # queued with the rest of its chunk (settle_ready)
        else:
            self.updater.queue(report)

    def in_flight(self) -> int:
        return sum(1 for s in self.submissions.values() if not s.done)

    def _active(self) -> list[SubmissionState]:
        return [s for s in self.submissions.values() if not s.done]

    # -- fetch, pack, stage in, submit ---------------------------------------------------
    def fetch_and_submit(self) -> int:
        """One bulk fetch; returns the number of jobs submitted to the batch system."""
        from hpc.packing import plan_submissions

        hpc = self.site.hpc
        if self.in_flight() >= hpc.max_submissions or not self.source.ready():
            return 0
        raw_jobs = self.source.fetch(hpc.max_jobs)
        if not raw_jobs:
            return 0
        self.job_sets += 1  # --once / --max-cycles count job sets taken, whatever became of them
        jobs: list[JobSpec] = []
        seen: set[int] = set()
        for data in raw_jobs:
            try:
                job = JobSpec.from_panda(data)
            except BadJobSpec as exc:
                panda_id = exc.panda_id or panda_id_of(data)
                log.error("bad job spec: %s", exc.diag)
                if panda_id is not None:
                    attempt = _int_or_zero(data.get("attemptNr")) if isinstance(data, dict) else 0
                    self._final(failed_report(panda_id, attempt, exc.code, exc.pilot_error_diag()))
                continue
            if job.panda_id in seen or self._in_flight_job(job.panda_id):
                # the same job twice: it runs once; failing the copy would fail the one that runs
                log.error("job %d handed out twice: the copy is dropped, the job runs once", job.panda_id)
                continue
            seen.add(job.panda_id)
            jobs.append(job)
        del raw_jobs, data  # each JobSpec holds its own copy (job.raw); 512 dicts fewer through stage-in
        if not jobs:
            return 0
        try:
            plan = plan_submissions(jobs, hpc)
        except ValueError as exc:  # a plan the config cannot make: these jobs fail, the daemon goes on
            diag = f"cannot place the job set: {exc}"
            log.error("%s", diag)
            for job in jobs:
                self.journal.job_started(job, "", mode="multijob")
                self._final(failed_report(job.panda_id, job.attempt_nr, ErrorCode.GENERAL, diag))
            return 0
        return sum(self._submit(submission) for submission in plan)

    def _in_flight_job(self, panda_id: int) -> bool:
        key = str(panda_id)
        return any(key in s.jobs and not s.jobs[key].final for s in self.submissions.values() if not s.done)

    def _submit(self, submission: Any) -> int:
        while True:  # unique even for two daemons of one process within one second (tests, a quick restart)
            self._seq += 1
            sub_id = f"sub-{int(time.time())}-{os.getpid()}-{self._seq}"
            subdir = self.shared / sub_id
            try:
                subdir.mkdir()
                break
            except FileExistsError:
                continue
        (subdir / "reports").mkdir(parents=True, exist_ok=True)
        site = _with_workdir(self.site, str(subdir / "jobs"))
        state = SubmissionState(
            sub_id=sub_id,
            queue=submission.queue,
            nodes=submission.nodes,
            walltime=submission.walltime,
            subdir=str(subdir),
        )
        start = utc_timestamp()
        overlap = self.site.hpc.jobset_wait > 0
        # without overlap, stage-in starts now and runs while the jobs are journaled: nothing here
        # is durable before the checkpoint below, so the order changes no crash window, only the wait
        prepared = None if overlap else self._stage_in(site, submission.jobs)
        started: list[tuple[JobSpec, str]] = []
        for job in submission.jobs:
            self.held.add(job.panda_id)
            workdir = str(lifecycle.job_workdir(site, job))
            started.append((job, workdir))
            state.jobs[str(job.panda_id)] = JobEntry(job.panda_id, job.attempt_nr, workdir)
        self.journal.jobs_started(started, mode="multijob", sub_id=sub_id)
        self.updater.queue_many(
            [
                JobReport(job.panda_id, "starting", job.attempt_nr, start_time=start, core_count=job.core_count)
                for job in submission.jobs
            ]
        )
        if overlap:
            # the batch job is submitted now, its inputs still on their way: it queues (or its
            # agents start and wait for the job set) while stage-in runs.  If this daemon dies
            # before the job set is written, the next one stages them in again (recover).
            # Stage-in starts after the journal work (its threads would slow this thread's down)
            # and runs while the batch system takes the job (this thread then waits on the broker)
            state.jobset_pending = True
            self._place(state, submission)
            self._checkpoint(state, submission)
            prepared = self._stage_in(site, submission.jobs)
            self._try_submit(state)
            runnable = self._jobset_after_stage_in(state, submission, prepared)
            return len(runnable) if state.batch_id else 0
        runnable = self._take_stage_in(state, submission, prepared)
        if not runnable:  # nothing to submit; the state is written so pruning finds the dir
            state.done = True
            self.submissions[sub_id] = state
            self._persist(state)
            return 0
        if len(runnable) != len(submission.jobs):
            from hpc.packing import plan_submissions

            submission = plan_submissions(runnable, self.site.hpc)[0]
        self._place(state, submission)
        if not self._write_jobset_or_fail(state, submission):
            return 0
        self._checkpoint(state, submission)
        return self._try_submit(state)

    def _stage_in(self, site: SiteConfig, jobs: Any) -> Any:
        """Work dirs and inputs of ``jobs`` on the transfer threads; the call returns their results."""
        copytool = self.copytool
        return self._start_parallel(lambda job: lifecycle.prepare_job(job, site, copytool), jobs)

    def _jobset_after_stage_in(self, state: SubmissionState, submission: Any, prepared: Any) -> list[JobSpec]:
        """A submitted (or being submitted) state's stage-in ends: its job set is written with
        the jobs whose inputs are in; returns them.  None in: the empty job set ends any agent
        that started, and the batch job is cancelled."""
        runnable = self._take_stage_in(state, submission, prepared)
        if state.done:  # the batch system refused it: every job has its final already
            return []
        if not self._write_jobset_or_fail(state, _only(submission, runnable)):
            return []
        if not runnable:
            self._end_batch_job(state)
            state.done = True
            self._plans.pop(state.sub_id, None)
            self._retry_at.pop(state.sub_id, None)
        state.jobset_pending = False
        self._persist(state)
        return runnable

    def _take_stage_in(self, state: SubmissionState, submission: Any, prepared: Any) -> list[JobSpec]:
        """The jobs whose inputs are in (their work dirs noted); a failed stage-in fails its job, once."""
        runnable = []
        for job, (workdir, error) in zip(submission.jobs, prepared(), strict=True):
            entry = state.jobs[str(job.panda_id)]
            if entry.final:  # failed meanwhile (the batch system refused the submission)
                continue
            if error is not None:
                log.error("job %d: stage-in failed: %s", job.panda_id, error.pilot_error_diag())
                # its work dir is kept (pruned later) with the failed stage-in's traces
                self._settle(
                    state, entry, failed_report(job.panda_id, job.attempt_nr, error.code, error.pilot_error_diag())
                )
                continue
            entry.workdir = str(workdir)
            runnable.append(job)
        return runnable

    @staticmethod
    def _place(state: SubmissionState, submission: Any) -> None:
        for placement in submission.placements:
            entry = state.jobs.get(str(placement.panda_id))
            if entry is not None:
                entry.node = placement.node

    def _write_jobset(self, state: SubmissionState, submission: Any) -> None:
        from hpc.jobset import write_jobset

        subdir = Path(state.subdir)
        workdirs = {job.panda_id: state.jobs[str(job.panda_id)].workdir for job in submission.jobs}
        notify = self._notify_target(state)
        # durable_outcomes=False: this daemon reads only the attributes file and syncs the outputs itself
        write_jobset(
            subdir / "jobset.json",
            submission,
            config_to_dict(self.site),
            workdirs,
            str(subdir),
            notify=notify,
            durable_outcomes=False,
            lean_outcomes=True,  # the attributes alone, one file per job: this daemon reads nothing else
        )

    def _write_jobset_or_fail(self, state: SubmissionState, submission: Any) -> bool:
        """Write the job set; when the shared file system refuses it (full, gone read-only), the
        submission's jobs fail, each once, its batch job (if any) is cancelled, and the daemon
        goes on — its agents would wait for a file that cannot come."""
        try:
            self._write_jobset(state, submission)
            return True
        except OSError as exc:
            code = ErrorCode.NO_LOCAL_SPACE if exc.errno == errno.ENOSPC else ErrorCode.GENERAL
            diag = f"cannot write the job set in {state.subdir}: {exc.strerror or exc}"
        self.submissions[state.sub_id] = state
        self._end_batch_job(state)
        self._fail_unsubmitted(state, diag, code)
        state.jobset_pending = False
        try:
            self._persist(state)
        except OSError as exc:  # the same file system: the journal holds the finals either way
            log.error("%s: cannot write its state either: %s", state.sub_id, exc)
        return False

    def _checkpoint(self, state: SubmissionState, submission: Any) -> None:
        """The intent, with the batch job's unique name, durable before the batch job exists:
        a daemon killed right after qsub finds that job by name instead of leaving it orphaned."""
        state.job_name = state.sub_id
        self.submissions[state.sub_id] = state
        self._plans[state.sub_id] = submission
        self._persist(state)
        self.journal.checkpoint()  # the jobs and their work dirs are on disk before the batch job exists

    def _notify_target(self, state: SubmissionState) -> Any:
        """Where this submission's agents send wake-ups (a fresh key, kept in its state); None = poll only."""
        from hpc.notify import NotifyTarget, new_key

        listener = self._open_listener()
        if listener is None:
            return None
        state.notify_key = new_key()
        listener.add(state.sub_id, state.notify_key)
        return NotifyTarget(self._notify_host, listener.port, state.sub_id, state.notify_key)

    def _try_submit(self, state: SubmissionState) -> int:
        """Hand a prepared submission to the batch system; on failure keep its jobs or fail them."""
        self._retry_at.pop(state.sub_id, None)
        submission = self._plans.get(state.sub_id) or self._replan(state)
        if submission is None:
            return 0
        subdir = Path(state.subdir)
        try:
            batch_id = self.backend.submit(submission, subdir, subdir / "jobset.json")
        except Exception as exc:  # a batch error is this submission's, never the daemon's
            self._submit_failed(state, exc)
            return 0
        crash_point("daemon-after-submit")
        state.batch_id = batch_id
        state.submit_error = ""
        state.checked_at = time.monotonic()
        self._submit_failures = 0
        self._plans.pop(state.sub_id, None)
        log.info(
            "%s: %d jobs on %d nodes, queue %s, walltime %d s, batch id %s",
            state.sub_id,
            len(submission.jobs),
            submission.nodes,
            submission.queue,
            submission.walltime,
            state.batch_id,
        )
        self._persist(state)
        keys = [(entry.panda_id, entry.attempt_nr) for entry in state.jobs.values()]
        self.journal.set_states(keys, "submitted", batch_id=state.batch_id)
        return len(submission.jobs)

    def _replan(self, state: SubmissionState) -> Any:
        """The submission of a restarted daemon's unsubmitted state (same jobs, same packing)."""
        from hpc.packing import plan_submissions

        specs = [self._spec(e) for e in state.jobs.values() if not e.final and e.panda_id in self.held]
        jobs = [job for job in specs if job is not None]
        if not jobs:
            state.done = True
            self._persist(state)
            return None
        plan = plan_submissions(jobs, self.site.hpc)[0]
        # the job set on disk places its jobs on its own nodes (jobs that failed since may have
        # emptied some): the batch job asks for all of them, so no node of it is left without a rank
        nodes = _jobset_nodes(Path(state.subdir) / "jobset.json")
        if nodes > plan.nodes:
            plan = replace(plan, nodes=nodes)
        self._plans[state.sub_id] = plan
        return plan

    def _submit_failed(self, state: SubmissionState, exc: Exception) -> None:
        """A temporary error keeps the jobs (retried with backoff, heartbeats go on); a permanent
        one, or the submit deadline, fails them with the batch system's code.  Consecutive
        failures count towards the circuit breaker either way."""
        hpc = self.site.hpc
        temporary = bool(getattr(exc, "temporary", False))
        state.submit_attempts += 1
        state.submit_error = " ".join(str(exc).split())[:400]
        self._submit_failures += 1
        waited = time.time() - state.created  # wall clock: the deadline must survive a restart
        if temporary and waited < hpc.submit_deadline:
            delay = min(hpc.submit_backoff * 2 ** (state.submit_attempts - 1), hpc.submit_backoff_max)
            self._retry_at[state.sub_id] = time.monotonic() + delay
            log.warning(
                "%s: submission failed (temporary, attempt %d), retrying in %.0f s; its %d jobs are kept: %s",
                state.sub_id,
                state.submit_attempts,
                delay,
                len(state.jobs),
                state.submit_error,
            )
        else:
            why = "refused" if not temporary else f"not accepted within {hpc.submit_deadline:.0f} s"
            self._fail_unsubmitted(state, f"batch submission {why}: {state.submit_error}")
        if self._submit_failures >= hpc.breaker_threshold and not self.breaker_open:
            self.breaker_open = True
            self.unhealthy = (
                f"circuit breaker open: {self._submit_failures} consecutive submission failures "
                f"(last: {state.submit_error[:200]})"
            )
            log.error("%s; fetching stopped", self.unhealthy)
            self._breaker_retry = time.monotonic() + hpc.submit_backoff_max
        self._persist(state)

    def _fail_unsubmitted(self, state: SubmissionState, diag: str, code: int = ErrorCode.BATCH_SYSTEM_FAILED) -> None:
        log.error("%s: %s", state.sub_id, diag)
        for entry in state.jobs.values():
            if not entry.final:
                self._finish_entry(state, entry, (code, diag))
        state.done = True
        self._plans.pop(state.sub_id, None)
        self._retry_at.pop(state.sub_id, None)

    def _retry_submissions(self) -> None:
        """Unsubmitted submissions whose backoff has passed go to the batch system again."""
        now = time.monotonic()
        for state in list(self.submissions.values()):
            if state.done or state.batch_id:
                continue
            if self._abandon:
                self._fail_unsubmitted(state, f"daemon gives up: {self.unhealthy or 'stopping'}")
                self._persist(state)
            elif self._retry_at.get(state.sub_id, 0.0) <= now:
                self._try_submit(state)

    # -- recovery after a restart --------------------------------------------------------
    def recover(self) -> int:
        """Re-send owed reports and take back the submissions a killed daemon left in flight."""
        for report in self.journal.pending_reports():
            self.updater.queue(report)
        self.updater.settle_owed_finals()  # finals whose ack a crash lost are not sent twice
        specs = {(e.panda_id, e.attempt_nr): e.spec for e in self.journal.unfinished_jobs() if e.mode == "multijob"}
        adopted = 0
        for path in sorted(self.shared.glob("sub-*/state.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                log.warning("unreadable submission state %s: %s", path, exc)
                continue
            if data.get("done") or data.get("sub_id") in self.submissions:
                continue
            jobs = {k: JobEntry(**v) for k, v in data.pop("jobs", {}).items()}
            state = SubmissionState(**data, jobs=jobs)
            state.checked_at = 0.0  # ask the batch system at once what became of it
            for entry in jobs.values():
                spec = specs.get((entry.panda_id, entry.attempt_nr))
                if entry.final or self.journal.final_acked(entry.panda_id, entry.attempt_nr):
                    entry.final = entry.final or "reported"
                elif spec is not None:
                    self.held.add(entry.panda_id)  # its spec stays in the journal (see _spec)
                else:
                    entry.final = "unknown"  # not ours any more (e.g. a final report is pending)
            self.submissions[state.sub_id] = state
            adopted += 1
            listener = self._open_listener() if state.notify_key else None
            if listener is not None:  # its agents still reach us if this daemon listens on the same port
                listener.add(state.sub_id, state.notify_key)
            if state.jobset_pending and not (Path(state.subdir) / "jobset.json").exists():
                self._recover_pending_jobset(state)
            state.jobset_pending = False
            if not state.batch_id and not state.done:
                self._recover_unsubmitted(state)
            log.warning("adopted submission %s (batch id %s) left by a previous daemon", state.sub_id, state.batch_id)
        self._seq = max(self._seq, len(self.submissions))
        return adopted

    def _recover_pending_jobset(self, state: SubmissionState) -> None:
        """The daemon died after submitting, before stage-in ended: the batch job's agents wait
        for a job set (``hpc.jobset_wait``).  Its jobs are staged in again (into the same work
        dirs) and the job set written on the nodes they were planned on."""
        from hpc.packing import Placement, Submission

        jobs = []
        waiting = [entry for entry in state.jobs.values() if not entry.final]
        specs = self.journal.job_specs([(entry.panda_id, entry.attempt_nr) for entry in waiting])  # one query
        for entry in waiting:
            data = specs.get((entry.panda_id, entry.attempt_nr))
            try:  # with its raw dict (``_spec`` drops it): the job set carries the whole spec
                jobs.append(JobSpec.from_panda(data or {}))
            except BadJobSpec as exc:
                self._finish_entry(state, entry, (ErrorCode.GENERAL, f"job spec in the journal unreadable: {exc.diag}"))
        slots: Counter[int] = Counter()
        placements = []
        for job in jobs:
            node = state.jobs[str(job.panda_id)].node
            placements.append(Placement(job.panda_id, node, slots[node]))
            slots[node] += 1
        hpc = self.site.hpc
        submission = Submission(
            state.queue, state.nodes, hpc.slots_per_node, state.walltime, tuple(jobs), tuple(placements)
        )
        site = _with_workdir(self.site, str(Path(state.subdir) / "jobs"))
        log.warning(
            "%s: the previous daemon stopped while staging in: staging its %d jobs in again", state.sub_id, len(jobs)
        )
        self._jobset_after_stage_in(state, submission, self._stage_in(site, submission.jobs))

    def _recover_unsubmitted(self, state: SubmissionState) -> None:
        """A state without batch id: the daemon died around qsub.  Find the batch job by its
        unique name; when there is none (and no trace of one having run), submit again."""
        find = getattr(self.backend, "find", None)
        found = None
        if find is not None:
            try:
                found = find(state.job_name or state.sub_id, Path(state.subdir))
            except Exception as exc:
                log.warning("%s: cannot look the batch job up by name: %s", state.sub_id, exc)
        ended = getattr(self.backend, "ended", None)
        ran = ended is not None and ended(Path(state.subdir))
        if found:
            state.batch_id = str(found)
            log.warning("%s: found its batch job %s by name %s", state.sub_id, found, state.job_name)
        elif ran or any(state.reports_dir.glob("*.started")):
            state.batch_id = f"unknown-{state.job_name or state.sub_id}"  # it ran: its results say the rest
            state.checked_at = 0.0
            log.warning("%s: its batch job ran but is gone; collecting what it left", state.sub_id)
        else:
            log.warning("%s: never reached the batch system: submitting it again", state.sub_id)
            return
        self._persist(state)
        keys = [(entry.panda_id, entry.attempt_nr) for entry in state.jobs.values() if not entry.final]
        self.journal.set_states(keys, "submitted", batch_id=state.batch_id)

    # -- watch ---------------------------------------------------------------------------
    def watch(self) -> None:
        """Turn node agents' markers and result files into updates; settle ended batch jobs.

        The batch system is asked only every ``hpc.batch_check_interval`` seconds, or at
        once when the worker wrapper has left its exit marker: the node agents' files say
        everything else, and each question to qstat / squeue costs the MOM node and the
        batch server more than reading a directory.
        """
        self._retry_submissions()
        for state in self.submissions.values():
            if state.done or not state.batch_id:
                continue
            changed = self._collect(state)
            changed = self._fail_lost_nodes(state) or changed
            if self._close_if_settled(state):
                continue
            if not self._batch_check_due(state):
                if changed or state.sub_id in self._unsaved:
                    self._persist(state)
                continue
            status = self._batch_status(state)
            state.checked_at = time.monotonic()
            if not status:
                continue
            state.batch_status = status
            if status in ("finished", "failed", "cancelled", "missed"):
                self._collect(state)  # results written just before the batch job ended
                for entry in state.jobs.values():
                    if not entry.final:
                        diag = f"batch job {state.batch_id} ended ({status}) without a result for this job"
                        code = ErrorCode.BATCH_TIME_LIMIT if entry.state == "running" else ErrorCode.LOST_CONTACT
                        self._finish_entry(state, entry, (code, diag))
                state.done = True
            self._persist(state)

    def _close_if_settled(self, state: SubmissionState) -> bool:
        """Every job of ``state`` has its final: the submission is done (persisted); True if so."""
        if not all(entry.final for entry in state.jobs.values()):
            return False
        state.done = True
        if state.sub_id in self._lost_node_subs:  # a dead node may hold its batch job open forever
            self._end_batch_job(state)
        self._persist(state)
        return True

    def react(self, burst: wakeups.Burst) -> None:
        """Node agents said these jobs started or ended: read only their files, report at once.

        A notice names jobs; it proves nothing.  Only the named jobs' own files are read
        (the same reading as the poll's), names that are not jobs of that submission are
        ignored, and whatever the files do not show yet is left to the next poll.
        """
        self.wakeups += 1
        log.debug(
            "wake-up: %d started, %d ended",
            sum(len(v) for v in burst.started.values()),
            sum(len(v) for v in burst.ended.values()),
        )
        self._intake = burst
        self._intake_until = time.monotonic() + INTAKE_LIMIT
        try:
            with self.journal.transaction():
                while self._intake:
                    sub_id = self._intake.sub_ids()[0]
                    named = self._intake.pop(sub_id)
                    state = self.submissions.get(sub_id)
                    if state is None or state.done or not state.batch_id:
                        continue
                    if self._collect(state, only=named) and not self._close_if_settled(state):
                        self._unsaved.add(sub_id)  # the next round persists it: one write, not one per burst
        finally:
            self._intake = None
        self._report_now()

    def _more_named(self, state: SubmissionState) -> set[int]:
        """PandaIDs of ``state`` named by notices that arrived while its burst is staged out.

        Why: the payloads of a batch job end in a wave of a second or two, and its first
        notices start a burst; without this, jobs whose outcome comes a moment later
        wait for that whole burst (its syncs and reports) before their stage-out starts.
        Notices for other submissions wait in the intake for their own turn; after
        :data:`INTAKE_LIMIT` seconds of one wake-up nothing more is taken in (the loop's
        round — heartbeats, batch checks — must not wait for ever).
        """
        if self._intake is None or self.listener is None or time.monotonic() > self._intake_until:
            return set()
        notices, _ = self.listener.take()
        self._intake.add(notices)
        named = sorted(self._intake.pop(state.sub_id))
        if len(named) > INTAKE_BATCH:  # reading outcomes is this thread's work: a bounded bite at a time
            self._intake.ended.setdefault(state.sub_id, set()).update(named[INTAKE_BATCH:])
        return set(named[:INTAKE_BATCH])

    def _report_now(self) -> None:
        """Make the settled jobs durable, clean their work dirs and report everything pending in one request."""
        began = time.monotonic()
        self.journal.checkpoint()  # a final is in the journal before PanDA hears of it
        committed = time.monotonic()
        self._clean_settled()
        self.act_on_commands(self.updater.flush())
        log.debug("reported: commit %.3f s, request %.3f s", committed - began, time.monotonic() - committed)

    def _clean_settled(self) -> None:
        """Hand finished jobs' work dirs to the cleaner (only after the commit that holds their finals)."""
        self._cleaner.remove(self._to_clean)
        self._to_clean = []

    def agent_alive(self, state: SubmissionState, entry: JobEntry) -> bool:
        """Whether the node agent running ``entry`` has beaten within ``hpc.agent_timeout``.

        The agent touches ``<reports>/agent-<node>.alive`` at the daemon's poll interval; a
        job that started counts from its start until the first beat is seen.  The mtime is
        the shared file system's clock, so the timeout is minutes, never seconds.
        """
        if entry.node < 0 or entry.state != "running":
            return True
        try:
            last = (state.reports_dir / f"agent-{entry.node}.alive").stat().st_mtime
        except OSError:
            last = 0.0
        last = max(last, entry.started_at)
        return time.time() - last < self.site.hpc.agent_timeout

    def _fail_lost_nodes(self, state: SubmissionState) -> bool:
        """Jobs of a node whose agent went silent fail now (1390), not at the batch job's walltime."""
        lost = [e for e in state.jobs.values() if not e.final and not self.agent_alive(state, e)]
        for entry in lost:
            silent = self.site.hpc.agent_timeout
            diag = f"node {entry.node} lost: its node agent was silent for more than {silent:.0f} s"
            log.error("job %d: %s", entry.panda_id, diag)
            (state.reports_dir / f"{entry.panda_id}.kill").write_text("lost")  # should the agent come back
            self._finish_entry(state, entry, (ErrorCode.NODE_LOST, diag))
        if lost:
            self._lost_node_subs.add(state.sub_id)
        return bool(lost)

    def _end_batch_job(self, state: SubmissionState) -> None:
        """Every job of a submission has its final state: a batch job still holding nodes is cancelled."""
        ended = getattr(self.backend, "ended", None)
        if not state.batch_id or state.batch_id.startswith("unknown-") or ended is None or ended(Path(state.subdir)):
            return
        try:
            self.backend.kill(state.batch_id, Path(state.subdir))
            log.info("%s: every job settled; batch job %s cancelled", state.sub_id, state.batch_id)
        except Exception as exc:
            log.warning("%s: cannot cancel batch job %s: %s", state.sub_id, state.batch_id, exc)

    def _batch_status(self, state: SubmissionState) -> str:
        """The WorkSpec status of a submission's batch job; "" when the batch system did not answer."""
        if state.batch_id.startswith("unknown-"):  # ran, but lost to a crash around qsub: its marker settles it
            ended = getattr(self.backend, "ended", None)
            return "finished" if ended is not None and ended(Path(state.subdir)) else ""
        try:
            return str(self.backend.status(state.batch_id, Path(state.subdir)))
        except Exception as exc:  # a hung or failing qstat: ask again next interval, heartbeats go on
            log.warning("%s: batch status of %s unknown: %s", state.sub_id, state.batch_id, exc)
            return ""

    def _batch_check_due(self, state: SubmissionState) -> bool:
        if time.monotonic() - state.checked_at >= self.site.hpc.batch_check_interval:
            return True
        ended = getattr(self.backend, "ended", None)  # optional: the wrapper's exit marker
        return bool(ended is not None and ended(Path(state.subdir)))

    def _collect(self, state: SubmissionState, only: set[int] | None = None) -> bool:
        """Read the node agents' files (all jobs, or ``only`` these PandaIDs); True when a job changed state."""
        if only is None:
            try:
                names = set(os.listdir(state.reports_dir))
            except FileNotFoundError:
                return False
            changed, results = self._read_files(state, list(state.jobs), names.__contains__)
        else:
            changed, results = self._read_named(state, only)
        if results:
            self._stage_out(state, results)
        return changed or bool(results)

    def _read_named(self, state: SubmissionState, only: set[int]) -> tuple[bool, list[tuple[JobEntry, JobOutcome]]]:
        """:meth:`_read_files` for the PandaIDs a notice named (a name not of this submission: ignored)."""
        reports = state.reports_dir
        keys = [str(i) for i in sorted(only) if str(i) in state.jobs]
        return self._read_files(state, keys, lambda name: os.path.exists(reports / name))

    def _read_files(
        self, state: SubmissionState, keys: list[str], has_marker: Any
    ) -> tuple[bool, list[tuple[JobEntry, JobOutcome]]]:
        """Started markers → running reports (queued); outcome files → the jobs to stage out."""
        reports = state.reports_dir
        changed = False
        results: list[tuple[JobEntry, JobOutcome]] = []
        running: list[JobReport] = []
        for key in keys:
            entry = state.jobs[key]
            if entry.final or entry.panda_id in self._staging:
                continue
            # the node agent's per-job files in Harvester's format, in the job's work dir
            outcome = jobfiles.read_outcome(entry.workdir, entry.panda_id)
            if outcome is not None:
                if entry.panda_id in self.held:
                    results.append((entry, outcome))
            elif entry.state == "starting" and has_marker(f"{key}.started"):
                entry.state = "running"
                entry.started_at = time.time()
                entry.host = _marker_host(reports / f"{key}.started")
                changed = True
                running.append(JobReport(entry.panda_id, "running", entry.attempt_nr, core_count=1, node=entry.host))
        self.updater.queue_many(running)
        return changed, results

    def _stage_out(self, state: SubmissionState, results: list[tuple[JobEntry, JobOutcome]]) -> None:
        """Stage outputs out on a pool and settle the jobs in chunks as their transfers end.

        Stage-out is the slow part (xrdcp to EOS): jobs whose outputs are at their
        destination are reported then, in one bulk request with the others that got
        there within :data:`~compass_pilot.modes.wakeups.COALESCE_WINDOW`, not after
        the slowest transfer of the whole round.  The last ones go with the caller's flush.

        A copytool with ``burst()`` (the local one) writes without an fsync per file;
        each chunk is made durable by ONE sync before its jobs settle — a final is
        journaled, hence reported, only for outputs that are on disk for good.
        """
        copytool = self.copytool  # made here, not raced for by the threads
        make_burst = getattr(copytool, "burst", None)
        burst = make_burst() if make_burst is not None else None
        tool = burst if burst is not None else copytool
        specs = self._specs([entry for entry, _ in results])  # journal reads: on this thread
        one = _guarded(lambda item: self._report_from_result(*item, tool, specs.get(item[0].panda_id)))
        ready: list[tuple[JobEntry, tuple[Any, PilotError | None]]] = []

        def settle_ready() -> None:
            if not ready:
                return
            began = time.monotonic()
            failed = burst.sync() if burst is not None else {}
            log.debug("%s: %d job(s) out, synced in %.3f s", state.sub_id, len(ready), time.monotonic() - began)
            self._finals_batch = []
            try:
                for entry, outcome in ready:
                    self._settle_result(state, entry, _unless_lost(outcome, failed))
            finally:
                batch, self._finals_batch = self._finals_batch, None
                self.updater.queue_many(batch)  # one journal statement for the chunk, not two per job
            ready.clear()

        threads = max(1, min(self.site.hpc.transfer_threads, getattr(copytool, "max_threads", len(results))))
        if threads <= 1 and self._intake is None:
            started = time.monotonic()
            for n, item in enumerate(results, 1):
                ready.append((item[0], one(item)))
                if n < len(results) and time.monotonic() - started >= wakeups.COALESCE_WINDOW:
                    settle_ready()
                    self._report_now()
                    started = time.monotonic()
            settle_ready()
            return
        staged = {entry.panda_id for entry, _ in results}
        self._staging |= staged  # a notice repeated meanwhile does not start a second stage-out
        try:
            self._stage_out_pool(state, results, threads, one, specs, ready, settle_ready, staged)
        finally:
            self._staging -= staged

    def _stage_out_pool(
        self,
        state: SubmissionState,
        results: list[tuple[JobEntry, JobOutcome]],
        threads: int,
        one: Any,
        specs: dict[int, JobSpec | None],
        ready: list[Any],
        settle_ready: Any,
        staged: set[int],
    ) -> None:
        """_stage_out's pool: transfers, chunked settling, and the jobs that end meanwhile taken in."""
        unsent_since = 0.0  # monotonic time the oldest finished, unreported transfer ended (0: none)
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="transfer") as pool:
            pending = {pool.submit(one, item): item for item in results}
            while True:
                if pending:
                    # a slow transfer must not hold back the jobs already out: wake at the window's end
                    left = unsent_since + wakeups.COALESCE_WINDOW - time.monotonic()
                    timeout = max(0.0, left) if unsent_since else None
                    done, _ = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
                    for future in done:
                        ready.append((pending.pop(future)[0], future.result()))
                        unsent_since = unsent_since or time.monotonic()
                due = bool(unsent_since) and (not pending or time.monotonic() - unsent_since >= wakeups.COALESCE_WINDOW)
                if due:
                    settle_ready()
                    self._report_now()
                    unsent_since = 0.0
                # jobs that ended meanwhile join this burst at once — once what is out is reported:
                # reading their outcomes is this thread's work, and the finals already made wait for none of it
                named = self._more_named(state) if not ready else set()
                if named:
                    _, more = self._read_named(state, named)
                    self._unsaved.add(state.sub_id)
                    specs.update(self._specs([entry for entry, _ in more]))
                    pending.update({pool.submit(one, item): item for item in more})
                    staged.update(entry.panda_id for entry, _ in more)
                    self._staging.update(entry.panda_id for entry, _ in more)
                if not pending:
                    break
        settle_ready()

    def _settle_result(self, state: SubmissionState, entry: JobEntry, outcome: tuple[Any, PilotError | None]) -> None:
        """A job's final from its stage-out's outcome (a failed transfer fails the job with its code)."""
        report, error = outcome
        if error is not None:
            report = failed_report(entry.panda_id, entry.attempt_nr, error.code, error.pilot_error_diag())
        self._settle(state, entry, report)

    def _specs(self, entries: list[JobEntry]) -> dict[int, JobSpec | None]:
        """The specs of these held jobs, read back from the journal in one query."""
        rows = self.journal.job_specs([(e.panda_id, e.attempt_nr) for e in entries])
        return {e.panda_id: self._parse_spec(e, rows.get((e.panda_id, e.attempt_nr))) for e in entries}

    def _spec(self, entry: JobEntry) -> JobSpec | None:
        """A held job's spec, read back from the journal (None if it is not there: the job then fails)."""
        return self._parse_spec(entry, self.journal.job_spec(entry.panda_id, entry.attempt_nr))

    @staticmethod
    def _parse_spec(entry: JobEntry, data: dict[str, Any] | None) -> JobSpec | None:
        if data is None:
            return None
        try:
            # without its raw dict: that is needed only to start a job (journal, job set), not to end it
            return replace(JobSpec.from_panda(data), raw={})
        except BadJobSpec as exc:  # it parsed when it was taken: a damaged journal row
            log.error("job %d: spec in the journal unreadable: %s", entry.panda_id, exc.diag)
            return None

    def _report_from_result(
        self, entry: JobEntry, outcome: JobOutcome, copytool: Any, job: JobSpec | None
    ) -> JobReport:
        """Stage a job's outputs out and build its final report from its node agent's outcome (I/O only)."""
        if job is None:
            raise PilotError(f"job {entry.panda_id}: its spec is missing from the daemon's journal", ErrorCode.GENERAL)
        result = outcome.payload_result()
        per_file = outcome.output_events  # the agent's counts (lean outcome): the logs are not read again
        if per_file is None:  # three files (an agent without lean outcomes): the counts are in its outputs dump
            per_file = jobfiles.read_event_counts(entry.workdir, entry.panda_id)
        report = lifecycle.finish_job(
            job,
            Path(entry.workdir),
            result,
            self.site,
            copytool,
            verdict=outcome.verdict,
            log_packed=True,
            counted=(outcome.n_events, per_file) if per_file is not None else None,
            known_sums=outcome.output_sums,  # the agent's (size, adler32): outputs are not read again here
        )
        report.node = report.node or outcome.node or ""  # the compute node it ran on, not this MOM node
        return report

    def _finish_entry(self, state: SubmissionState, entry: JobEntry, verdict: tuple[int, str]) -> None:
        """A job that ends without a result of its own (its batch job ended first)."""
        if entry.panda_id not in self.held:
            return
        self._settle(state, entry, failed_report(entry.panda_id, entry.attempt_nr, verdict[0], verdict[1]))

    def _settle(self, state: SubmissionState, entry: JobEntry, report: JobReport) -> None:
        report.batch_id = state.batch_id
        entry.final = report.state
        entry.state = report.state
        self._final(report)
        self.held.discard(entry.panda_id)  # settled
        if report.state == "finished":
            # removed only once this round's journal commit holds the report (see round())
            self._to_clean.append(Path(entry.workdir))

    def _start_parallel(self, work: Any, items: list[Any]) -> Any:
        """Start ``work(item)`` for every item on up to ``hpc.transfer_threads`` threads now;
        the returned function waits for the outcomes, in order.

        Each outcome is ``(value, None)`` or ``(None, PilotError)``; an unexpected exception
        becomes a PilotError naming it, so one bad transfer fails its job, not the daemon.
        Only I/O runs in the threads: the journal and the updater stay on the caller's,
        which does its own bookkeeping while the transfers run.
        """
        one = _guarded(work)
        threads = min(self.site.hpc.transfer_threads, len(items))
        if threads <= 1:
            return lambda: [one(item) for item in items]
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="transfer")
        futures = [pool.submit(one, item) for item in items]
        pool.shutdown(wait=False)  # its threads end with the last transfer
        return lambda: [future.result() for future in futures]

    # -- heartbeats and reporting --------------------------------------------------------
    def heartbeat_due(self) -> bool:
        return time.monotonic() - self._last_heartbeat >= self.site.hpc.heartbeat_interval

    def queue_heartbeats(self) -> None:
        # jobs waiting for the batch system (queued, or a submission being retried) beat as
        # "starting": without it PanDA fails a job that waits longer than its heartbeat timeout
        beats = [
            JobReport(entry.panda_id, entry.state, entry.attempt_nr, batch_id=state.batch_id, node=entry.host)
            for state in self.submissions.values()
            for entry in state.jobs.values()
            if entry.state in ("starting", "running") and not entry.final and self.agent_alive(state, entry)
        ]
        self.updater.queue_heartbeats(beats)
        self._last_heartbeat = time.monotonic()

    def act_on_commands(self, commands: dict[int, str | None]) -> None:
        """Server kill commands: the Blue Waters pilot ignored them; we record them for the agent."""
        for panda_id, command in commands.items():
            if command not in ("tobekilled", "softkill"):
                continue
            for state in self.submissions.values():
                entry = state.jobs.get(str(panda_id))
                if entry is not None and not entry.final:
                    kill_file = state.reports_dir / f"{panda_id}.kill"
                    kill_file.write_text(command)
                    log.warning("job %d: server says %s: asked the node agent to kill it", panda_id, command)

    def round(self) -> None:
        """One pass: fetch/submit if there is room, collect results, report in one request."""
        self.rounds += 1
        with self.journal.transaction():  # the round's transitions: one durable commit, not one per job
            if self._may_fetch and not self.stop_event.is_set():
                self.fetch_and_submit()
            self.watch()
        self._clean_settled()
        if self.heartbeat_due():
            self.queue_heartbeats()
        commands = self.updater.flush()
        self.act_on_commands(commands)
        self._forget_settled()
        if self._next_prune is None:
            self._next_prune = time.monotonic() + self.prune_interval
        elif time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + self.prune_interval
            self.prune()
        self._write_daemon_state()

    # -- months of operation: bounded memory and disk --------------------------------
    def _forget_settled(self) -> None:
        """Keep only the most recent settled submissions in memory (their state.json stays)."""
        done = [s for s in self.submissions.values() if s.done]
        for state in done:
            self._unsaved.discard(state.sub_id)
            if self.listener is not None:
                self.listener.remove(state.sub_id)  # its late wake-ups are dropped as unknown
        for state in done[: max(0, len(done) - DONE_SUBMISSIONS_MEMORY)]:
            del self.submissions[state.sub_id]
            self._lost_node_subs.discard(state.sub_id)
            self._plans.pop(state.sub_id, None)
            self._retry_at.pop(state.sub_id, None)

    def prune(self) -> None:
        """Acknowledged journal rows and settled submission dirs go; failed ones after ``failed_dir_keep_hours``.

        A submission dir whose jobs all finished holds only the job set, markers and batch
        logs (outputs are at their destination, work dirs already removed): it goes once
        its finals are acknowledged.  One with a failed job is kept for debugging.
        """
        import shutil

        keep = self.site.hpc.failed_dir_keep_hours * 3600
        try:
            forgotten = self.journal.prune(max(keep, 24 * 3600))
        except Exception as exc:  # pruning is housekeeping: never a reason to stop
            log.warning("journal pruning failed: %s", exc)
            forgotten = 0
        active = {s.sub_id for s in self.submissions.values() if not s.done}
        removed = 0
        for path in self.shared.glob("sub-*/state.json"):
            try:
                data = json.loads(path.read_text())
                if not data.get("done") or data.get("sub_id") in active:
                    continue
                finals = [j.get("final") for j in data.get("jobs", {}).values()]
                owed = any(
                    not self.journal.final_acked(int(j["panda_id"]), int(j["attempt_nr"]))
                    for j in data.get("jobs", {}).values()
                    if j.get("final") not in ("", "unknown", "reported")
                )
                age = time.time() - path.stat().st_mtime
                if owed or (any(f != "finished" for f in finals) and age < keep):
                    continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.debug("prune: %s: %s", path, exc)
                continue
            shutil.rmtree(path.parent, ignore_errors=True)
            self.submissions.pop(str(data.get("sub_id")), None)
            removed += 1
        if forgotten or removed:
            log.info("pruned %d journal job(s) and %d settled submission dir(s)", forgotten, removed)

    # -- preflight: no job is taken by a daemon that could not run it ------------------
    def preflight(self) -> bool:
        """Work dir, proxy and batch system checked before a getJob; False (and unhealthy) when not.

        The batch part is the backend's own (:func:`batch_check`: ``probe()`` or
        ``preflight()``, optional): it knows which adaptor, command and job service it
        will use.  A failure is one line in the log and in the daemon state file; the
        caller decides between exiting and re-checking.
        """
        from compass_pilot.preflight import PreflightError, check_proxy, check_workdir, daemon_proxy_need

        early, self._early_preflight = self._early_preflight, None  # its answer is for this first check only
        try:
            check_workdir(self.site.hpc.shared_dir, self.site.site.min_free_mb)
            check_proxy(self.site, daemon_proxy_need(self.site))
            backend_check = batch_check(self.backend)
            if early is not None:
                early.result()
            elif backend_check is not None:
                backend_check()
        except PreflightError as exc:
            log.error("preflight failed, fetching no jobs: %s", exc)
            self.unhealthy = str(exc)
            self.exit_code = exc.exit_code
            return False
        self.unhealthy = ""
        return True

    def _fetch_allowed(self, once: bool) -> bool:
        """Whether this round may ask PanDA for jobs: preflight passed (re-checked on a backoff)."""
        if self.breaker_open and once:
            self.exit_code = ExitCode.BLACK_HOLE
            self._abandon = True  # held jobs go back to PanDA with the batch code, not lost
            self.stop_event.set()
            return False
        if self.stop_event.is_set():
            return False
        if self.breaker_open:
            if time.monotonic() < self._breaker_retry or any(not s.batch_id for s in self._active()):
                return False
            self._preflight_ok = False  # half-open: one job set after a passing preflight
            self._preflight_next = 0.0
            self.breaker_open = False
            self.unhealthy = ""
        if self._preflight_ok:
            return True
        if time.monotonic() < self._preflight_next:
            return False
        self._preflight_ok = self.preflight()
        if not self._preflight_ok:
            if once:
                self.stop_event.set()  # --once: say why and exit non-zero; nothing was taken
            self._preflight_next = time.monotonic() + self._preflight_wait
            self._preflight_wait = min(self._preflight_wait * 2, self.site.hpc.no_jobs_backoff_max)
        return self._preflight_ok

    def run(self, *, once: bool = False, max_cycles: int = 0) -> int:
        """Loop until stopped; ``once``: stop fetching after the first submission and drain.

        Returns the process exit code (:mod:`compass_pilot.exitcodes`).
        """
        owed = len(self.journal.pending_reports())
        adopted = self.recover()
        submitted_cycles = 1 if adopted and once else 0
        while True:
            before = self.job_sets
            self._act_on_requests()
            self._may_fetch = self._fetch_allowed(once)
            self.round()
            if self.job_sets > before:
                submitted_cycles += 1
            # --once on an empty server: nothing to wait for (pilot3 exits "no jobs" too)
            nothing = once and self.job_sets == 0 and self.source.stats.empty > 0 and self.in_flight() == 0
            if nothing and not self.exit_code and not (adopted or owed):
                self.exit_code = ExitCode.NO_JOBS
            draining = (
                self.stop_event.is_set()
                or nothing
                or (once and submitted_cycles >= 1)
                or (max_cycles and submitted_cycles >= max_cycles)
            )
            if draining:
                self.stop_event.set()
                if self.in_flight() == 0 and self.updater.pending_finals() == 0:
                    break
                if self._stopping_hard and self.in_flight() == 0:
                    break  # every job has its final; what PanDA did not ack stays in the journal
            wait = self.site.hpc.poll_interval
            if self.in_flight() == 0 and not draining:
                until = self.source.seconds_until_ready()
                if not self._preflight_ok:
                    until = self._preflight_next - time.monotonic()
                wait = max(wait, min(until, self.site.hpc.no_jobs_backoff_max))
            self.progress.tick(self, wait)
            self._wait(wait, bool(draining))
        self._write_daemon_state()
        self.journal.close()
        self._cleaner.close()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1  # a late signal writes nowhere
        for fd in fds:
            os.close(fd)
        if self.exit_code:
            return int(self.exit_code)
        return int(ExitCode.REPORTS_OWED) if self.updater.pending_finals() else int(ExitCode.OK)

    def terminate(self) -> None:
        """SIGTERM: stop fetching, kill the batch jobs, report what is left, exit.

        Signal-safe: only a flag and a byte down the wake-up pipe; the main loop does the
        killing and reporting (a lock taken in a signal handler can deadlock the very
        thread the handler interrupted)."""
        self._term_requested = True
        self._poke()

    # -- state for `compass-pilot status` ------------------------------------------------
    def _persist(self, state: SubmissionState) -> None:
        path = Path(state.subdir) / "state.json"
        atomic_write_text(path, json.dumps(state.to_dict()))  # compact: the C encoder (indent is pure Python)

    def _write_daemon_state(self) -> None:
        states: Counter[str] = Counter()
        for state in self.submissions.values():
            for entry in state.jobs.values():
                states[entry.final or entry.state] += 1
        data = {
            "pid": os.getpid(),
            "site": self.site.site.name,
            "updated": time.time(),
            "healthy": not self.unhealthy,
            "unhealthy_reason": self.unhealthy,
            "circuit_breaker": "open" if self.breaker_open else "closed",
            "consecutive_submit_failures": self._submit_failures,
            "last_server_contact": max(self.source.stats.last_contact, self.updater.stats.last_contact),
            "fetch_requests": self.source.stats.requests,
            "update_requests": self.updater.stats.requests,
            "jobs_fetched": self.source.stats.jobs,
            "jobs_by_state": dict(states),
            **self.progress.figures(self),
            "pending_updates": self.updater.pending(),
            "errors_by_code": {str(k): v for k, v in self.errors.items()},
            "recent_errors": [
                {"time": t, "panda_id": p, "code": c, "diag": d[:200]} for t, p, c, d in self.recent_errors
            ],
            "submissions": [
                {
                    "sub_id": s.sub_id,
                    "batch_id": s.batch_id,
                    "queue": s.queue,
                    "nodes": s.nodes,
                    "jobs": len(s.jobs),
                    "created": s.created,
                    "batch_status": s.batch_status,
                    "done": s.done,
                }
                for s in self.submissions.values()
                if not s.done
            ],
        }
        atomic_write_text(self.shared / STATE_FILE, json.dumps(data, indent=1))


def _guarded(work: Any) -> Any:
    """``work`` returning ``(value, None)`` or ``(None, PilotError)``: one bad transfer fails its job only."""

    def one(item: Any) -> tuple[Any, PilotError | None]:
        try:
            return work(item), None
        except PilotError as exc:
            return None, exc
        except Exception as exc:
            log.exception("unexpected error in a transfer")
            return None, PilotError(f"{type(exc).__name__}: {exc}", ErrorCode.GENERAL)

    return one


def _unless_lost(outcome: tuple[Any, PilotError | None], lost: dict[str, PilotError]) -> tuple[Any, PilotError | None]:
    """A job's stage-out outcome, failed if one of its outputs could not be made durable.

    A failed job keeps its report; only the log that is not on disk is left out of it.
    """
    report, error = outcome
    if error is not None or not lost or report is None:
        return outcome
    gone = [f for f in report.output_files if f.surl in lost]
    if not gone:
        return outcome
    if report.state != "finished":
        report.output_files = [f for f in report.output_files if f.surl not in lost]
        return report, None
    return None, lost[gone[0].surl]


def _jobset_nodes(path: Path) -> int:
    """The node count a written job set asks for; 0 when there is none (or it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            nodes = json.load(handle).get("nodes")
    except (OSError, ValueError, AttributeError):
        return 0
    return nodes if isinstance(nodes, int) and not isinstance(nodes, bool) and nodes > 0 else 0


def _only(submission: Any, jobs: list[JobSpec]) -> Any:
    """``submission`` with only ``jobs`` placed: same nodes and walltime (its batch job already asked for them)."""
    keep = {job.panda_id for job in jobs}
    placements = tuple(p for p in submission.placements if p.panda_id in keep)
    return replace(submission, jobs=tuple(jobs), placements=placements)


def _int_or_zero(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _with_workdir(site: SiteConfig, workdir: str) -> SiteConfig:
    import copy

    clone = copy.deepcopy(site)
    clone.site.workdir = workdir
    return clone


def _marker_host(marker: Path) -> str:
    """The compute node's host name from a node agent's started marker (``pid time host``); "" if absent."""
    try:
        fields = marker.read_text().split()
    except OSError:
        return ""
    return fields[2][:128] if len(fields) > 2 else ""
