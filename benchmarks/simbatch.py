"""A simulated batch system: the daemon's ``BatchBackend`` with virtual payloads.

It is how a site sizes its MOM node before it has one: the real daemon (fetch, stage-in,
packing, job set, watching, stage-out, bulk reports, journal) runs unchanged against the
real dispatcher, while the batch system and the compute nodes are played by a separate
process — so the daemon's own CPU and memory are what the figures show, not the
simulator's.  For each submission the simulated side plays what a PBS/Slurm job with 16
node agents would leave on the shared file system:

queued (``queue_delay`` seconds) → running: every job's ``<PandaID>.started`` marker →
each payload "ends" ``runtime`` seconds after the FIRST submission, within a wave of
``spread`` seconds (so a benchmark knows when the daemon holds everything and when the
endings come, whatever the fill took): its output files in its work dir, then its outcome in
Harvester's shared-file format, written by the node agents' own writer
(``harvester_plugins.jobfiles.write_outcome``) → the wrapper's exit marker
(``harvester_plugins.saga_backend.EXIT_MARKER``) once all its results are out.

Like the node agents (``hpc.node_agent``), the simulated nodes wake the daemon when the
job set names a ``notify`` target (:mod:`hpc.notify`): one ``S`` datagram per node with
the PandaIDs it started, after their markers, and one ``E`` datagram per job after its
outcome files — so the daemon's event path is what the figures measure, at the rate the
real agents would send.  One socket per submission, no process per payload.

No payload process is started.  ``status`` answers as ``qstat`` would: queued before the
start, running until the exit marker, then finished; ``kill`` ends the submission's jobs
at once (cancelled).
The simulated side is event-driven: it sleeps until its next scheduled event or a new
request, never polls.

Use: ``SimBatchBackend(runtime=600)`` wherever a ``BatchBackend`` goes, or run a whole
daemon on it with :func:`run_daemon` (``benchmarks/scale.py`` does).
"""

from __future__ import annotations

import heapq
import json
import logging
import multiprocessing as mp
import os
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class SimBatchBackend:
    """``BatchBackend`` (submit / status / kill, optional ended / preflight) on simulated nodes."""

    def __init__(
        self, *, queue_delay: float = 2.0, runtime: float = 600.0, spread: float = 20.0, seed: int = 15
    ) -> None:
        self.queue_delay = queue_delay
        self.runtime = runtime
        self.spread = spread
        self.seed = seed
        self._schedule: dict[str, float] = {}  # batch id → start
        self.wave = 0.0  # when the payloads end: runtime after the first submission
        self._killed: set[str] = set()
        self._lock = threading.Lock()
        self._conn: Any = None
        self._proc: Any = None
        self._n = 0

    # -- the simulated nodes live in their own process ----------------------------------
    def _nodes(self) -> Any:
        if self._proc is None:
            ctx = mp.get_context("spawn")
            self._conn, child = ctx.Pipe()
            self._proc = ctx.Process(target=_node_side, args=(child,), name="simbatch-nodes", daemon=True)
            self._proc.start()
            child.close()
        return self._conn

    def close(self) -> dict[str, int]:
        """Stop the simulated nodes; returns how many wake-up datagrams they sent (by kind)."""
        stats: dict[str, int] = {}
        if self._proc is not None:
            try:
                self._conn.send(("stop",))
                if self._conn.poll(10):
                    stats = self._conn.recv()
            except (OSError, EOFError):
                pass
            self._proc.join(10)
            self._proc = None
        return stats

    def preflight(self) -> None:
        """Nothing to check: the simulated batch system is always there."""

    def submit(self, submission: Any, subdir: Path, jobset: Path) -> str:
        with self._lock:
            self._n += 1
            batch_id = f"{self._n}.sim"
            start = time.time() + self.queue_delay
            self.wave = self.wave or time.time() + self.runtime
            self._schedule[batch_id] = start
            self._nodes().send(("submit", str(jobset), str(subdir), start, self.wave, self.spread, self.seed + self._n))
        return batch_id

    def status(self, batch_id: str, subdir: Path) -> str:
        if batch_id in self._killed:
            return "cancelled"
        start = self._schedule.get(batch_id)
        if start is None:
            return "missed"
        if time.time() < start:
            return "submitted"
        return "finished" if self.ended(subdir) else "running"

    def ended(self, subdir: Path) -> bool:
        from harvester_plugins.saga_backend import read_exit_marker

        return read_exit_marker(str(subdir)) is not None

    def kill(self, batch_id: str, subdir: Path) -> None:
        with self._lock:
            self._killed.add(batch_id)
            self._nodes().send(("kill", str(subdir)))


# -- the simulated batch system and compute nodes (a separate process) -------------------
def _node_side(conn: Any) -> None:
    """Play every submission's schedule; sleep until the next event or a request."""
    events: list[tuple[float, int, str, Any]] = []
    seq = 0
    killed: set[str] = set()
    host = socket.gethostname()
    pending: dict[str, int] = {}  # subdir → results still to write
    senders: dict[str, Any] = {}  # subdir → its agents' wake-up sender (NotifySender), when the job set has one
    closed: list[Any] = []  # senders of ended submissions (their counts)
    # one writer per simulated node: a real agent's writes (fsync'd) run on its own node
    writers = ThreadPoolExecutor(max_workers=16, thread_name_prefix="simnode")

    def at(when: float, kind: str, data: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (when, seq, kind, data))

    while True:
        timeout = max(0.0, events[0][0] - time.time()) if events else None
        if conn.poll(timeout):
            try:
                message = conn.recv()
            except EOFError:
                return
            if message[0] == "stop":
                writers.shutdown(wait=True)
                sent = {"sent": 0, "failed": 0}
                for sender in [*senders.values(), *closed]:
                    sent["sent"] += sender.sent
                    sent["failed"] += sender.failed
                conn.send(sent)
                return
            if message[0] == "submit":
                _, jobset, subdir, start, wave, spread, seed = message
                at(start, "start", (jobset, subdir, wave, spread, seed))
            elif message[0] == "kill":
                killed.add(message[1])
                _exit_marker(Path(message[1]), 143)
            continue
        now = time.time()
        due = []
        while events and events[0][0] <= now + 0.05:  # one pass for everything due in the next 50 ms
            due.append(heapq.heappop(events))
        ended: list[tuple[str, Any]] = []
        for _, _, kind, data in due:
            if kind == "start":
                jobset, subdir, wave, spread, seed = data
                if subdir in killed:
                    continue
                if not Path(jobset).exists():  # submitted while staging in: its nodes wait for the job set
                    at(now + 0.5, "start", data)
                    continue
                jobs, sender = _start(Path(jobset), Path(subdir))
                senders[subdir] = sender
                pending[subdir] = len(jobs)
                rng = random.Random(seed)
                for job in jobs:
                    at(max(now, wave + rng.uniform(0, spread)), "end", (subdir, job, host))
            elif kind == "end":
                subdir, job, node_host = data
                if subdir not in killed:
                    ended.append((subdir, writers.submit(_finish, job, node_host, senders.get(subdir))))
        for subdir, future in ended:
            try:
                future.result()
            except OSError as exc:
                log.warning("simulated node: cannot write an outcome in %s: %s", subdir, exc)
            pending[subdir] -= 1
            if not pending[subdir]:
                _exit_marker(Path(subdir), 0)
                sender = senders.pop(subdir, None)
                if sender is not None:
                    sender.close()
                    closed.append(sender)


def _start(jobset: Path, subdir: Path) -> tuple[list[dict[str, Any]], Any]:
    """The batch job starts: every payload is 'running' (its started marker), each node says so (``S``)."""
    from hpc import notify
    from hpc.jobset import atomic_write_text, read_jobset

    parsed = read_jobset(jobset)
    reports = Path(parsed.reports_dir)
    reports.mkdir(parents=True, exist_ok=True)
    sender = notify.NotifySender(parsed.notify) if parsed.notify is not None else None
    now = time.time()
    jobs = []
    for node_jobs in parsed.node_jobs.values():
        for nj in node_jobs:
            atomic_write_text(reports / f"{nj.panda_id}.started", f"0 {now:.3f}\n", durable=False)
            jobs.append(
                {
                    "panda_id": nj.panda_id,
                    "attempt_nr": nj.job.attempt_nr,
                    "workdir": nj.workdir,
                    "outputs": [f.lfn for f in nj.job.output_files],
                    "started": now,
                    # the outcome's shape the job set asks for, as a node agent writes it
                    "durable": parsed.durable_outcomes,
                    "lean": parsed.lean_outcomes,
                }
            )
        if sender is not None and node_jobs:
            sender.send(notify.STARTED, [nj.panda_id for nj in node_jobs])  # one per node, as an agent does
    return jobs, sender


def _finish(job: dict[str, Any], host: str, sender: Any = None) -> None:
    """One virtual payload ends well: its outputs, its outcome files (as a node agent writes them), ``E``."""
    from harvester_plugins.jobfiles import JobOutcome, OutputFile, write_outcome
    from hpc import notify

    workdir = Path(job["workdir"])
    outputs = []
    for lfn in job["outputs"]:
        path = workdir / lfn
        path.write_bytes(b"simulated output\n")
        outputs.append(OutputFile.of(path, "output", "", 100))
    now = time.time()
    outcome = JobOutcome(
        panda_id=job["panda_id"],
        attempt_nr=job["attempt_nr"],
        status="finished",
        trans_exit_code=0,
        n_events=100,
        cpu_seconds=now - job["started"],
        max_rss_kb=50 * 1024,
        start_time=job["started"],
        end_time=now,
        core_count=1,
        node=host,
        outputs=outputs,
    )
    write_outcome(workdir, outcome, durable=job.get("durable", True), lean=job.get("lean", False))
    if sender is not None:
        sender.send(notify.ENDED, [job["panda_id"]])  # after the files: the daemon reads them at once


def _exit_marker(subdir: Path, code: int) -> None:
    from harvester_plugins.saga_backend import EXIT_MARKER
    from hpc.jobset import atomic_write_text

    try:
        atomic_write_text(subdir / EXIT_MARKER, f"{code}\n", durable=False)
    except OSError:
        pass


# -- a whole daemon on the simulator ----------------------------------------------------
def run_daemon(site_path: str, *, runtime: float, hold_poll: float, fill_to: int, status_path: str) -> int:
    """The real daemon (as ``compass-pilot daemon`` builds it) on a :class:`SimBatchBackend`.

    It fills quickly (one submission per round, rounds 1 s apart) until ``fill_to``
    submissions are in flight, then runs at ``hold_poll`` seconds per round as a site
    would; ``status_path`` gets one JSON line per phase for the benchmark to read.
    """
    from compass_pilot.leanimports import decline_charset_guessers

    # as `compass-pilot daemon` does before requests is imported: the figures are the daemon's
    if not decline_charset_guessers():
        log.warning("requests was imported before the daemon: its charset guesser counts in the RSS")
    from compass_pilot.config import load_site_config
    from compass_pilot.modes.multijob import MultiJobDaemon
    from compass_pilot.panda.client import PandaClient

    site = load_site_config(site_path)
    site.hpc.poll_interval = 1.0
    client = PandaClient(site.panda, site.site)
    backend = SimBatchBackend(runtime=runtime)
    daemon = MultiJobDaemon(site, client, backend)

    def phases() -> None:
        while not daemon.stop_event.is_set():
            try:
                filled = sum(1 for s in list(daemon.submissions.values()) if not s.done) >= fill_to
            except RuntimeError:  # the dict changed under us: look again
                filled = False
            except Exception:  # a bug here must not pass silently: scale.py then says "not measured"
                log.exception("benchmark phase watcher failed")
                return
            if filled:
                site.hpc.poll_interval = hold_poll
                with open(status_path, "a", encoding="utf-8") as out:
                    out.write(json.dumps({"phase": "filled", "time": time.time(), "wave": backend.wave}) + "\n")
                return
            time.sleep(0.5)

    threading.Thread(target=phases, daemon=True).start()
    wakeups: dict[str, int] = {}
    try:
        code = daemon.run(max_cycles=fill_to)
    finally:
        client.close()
        wakeups = backend.close()
    with open(status_path, "a", encoding="utf-8") as out:
        done = {"phase": "done", "time": time.time(), "final": len(daemon.final_states), "wakeups": wakeups}
        out.write(json.dumps(done) + "\n")
    return code


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="run the daemon on the simulated batch system")
    parser.add_argument("--site", required=True)
    parser.add_argument("--runtime", type=float, default=600.0, help="seconds from the first submission to the endings")
    parser.add_argument("--hold-poll", type=float, default=30.0, help="poll interval once filled")
    parser.add_argument("--fill", type=int, default=30, help="submissions to fill up to")
    parser.add_argument("--status", required=True, help="phase log (JSON lines)")
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("SIMBATCH_LOG", "WARNING"))
    sys.exit(
        run_daemon(
            args.site, runtime=args.runtime, hold_poll=args.hold_poll, fill_to=args.fill, status_path=args.status
        )
    )
