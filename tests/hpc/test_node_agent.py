"""The node agent: in-process (run_node, no MPI) and under the real hydra mpiexec.

The MPI tests render the local batch script with hpc.batch (4 fake nodes × 8 slots),
run it with bash, and let real payloads (shell commands through the real COMPASS
plug-in) run; the test then signals real processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from compass_pilot.config import HPCSection, PayloadSection, SiteConfig, config_to_dict
from compass_pilot.errors import CalibDBError, ErrorCode
from compass_pilot.exitcodes import ExitCode
from compass_pilot.job import JobSpec
from harvester_plugins import jobfiles
from harvester_plugins.jobfiles import JobOutcome
from hpc.batch import render_script
from hpc.jobset import NodeJob, write_jobset
from hpc.node_agent import NodeRun, run_node
from hpc.packing import plan_submissions
from tests.hpc.conftest import shell_job

#: the site config these tests run under: shell_job's ``sh -c`` transformation is trusted
SHELL = PayloadSection(commands=["sh"])

OK = "sleep 0.5; echo 7 events had been written to miniDST; echo End of Job"


def _wait_for(predicate, timeout: float, what: str) -> None:
    """Test-side bounded wait (the product code never polls; tests may)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def _node_jobs(tmp_path: Path, scripts: dict[int, str]) -> list[NodeJob]:
    return [
        NodeJob(pid, slot, str(tmp_path / f"PandaJob_{pid}_1"), shell_job(pid, script))
        for slot, (pid, script) in enumerate(scripts.items())
    ]


def _results(root: Path) -> dict[int, JobOutcome]:
    """Every job's outcome as Harvester would read it, from the work dirs under ``root``."""
    found = {}
    for workdir in root.glob("**/PandaJob_*_1"):
        panda_id = int(workdir.name.split("_")[1])
        outcome = jobfiles.read_outcome(workdir, panda_id)
        if outcome is not None:
            found[panda_id] = outcome
    return found


def _code(result: JobOutcome) -> int | None:
    return result.verdict[0] if result.verdict else None


# -- in-process --------------------------------------------------------------------------
def test_run_node_judges_each_payload(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    jobs = _node_jobs(tmp_path, {1: OK, 2: "echo oops; exit 3", 3: "echo no marker", 4: "echo A FATAL ERROR APPEARED"})
    results = run_node(jobs, reports_dir=reports, calibdb_opener=None, payload=SHELL)
    on_disk = _results(tmp_path)
    assert sorted(on_disk) == sorted(results) == [1, 2, 3, 4]
    assert {i: (r.status, r.error_code) for i, r in on_disk.items()} == {
        i: (r.status, r.error_code) for i, r in results.items()
    }
    assert _code(on_disk[1]) is None and on_disk[1].n_events == 7 and on_disk[1].trans_exit_code == 0
    assert _code(on_disk[2]) == ErrorCode.PAYLOAD_FAILED and on_disk[2].trans_exit_code == 3
    assert _code(on_disk[3]) == ErrorCode.COMPASS_NO_END_MARKER
    assert _code(on_disk[4]) == ErrorCode.COMPASS_FATAL_ERROR
    assert all((reports / f"{i}.started").exists() for i in range(1, 5))
    assert (tmp_path / "PandaJob_2_1" / "payload.stdout").read_text() == "oops\n"
    assert not list(tmp_path.glob("PandaJob_*/.*"))  # no temp files left


def test_existing_result_is_not_rerun(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    kept = {"jobStatus": "failed", "pilotErrorCode": 1213, "pilotErrorDiag": "kept"}
    (tmp_path / "PandaJob_1_1").mkdir()
    (tmp_path / "PandaJob_1_1" / "worker_attributes.json").write_text(json.dumps(kept))
    results = run_node(
        _node_jobs(tmp_path, {1: "touch ran", 2: OK}), reports_dir=reports, calibdb_opener=None, payload=SHELL
    )
    assert sorted(results) == [2]
    assert json.loads((tmp_path / "PandaJob_1_1" / "worker_attributes.json").read_text()) == kept
    assert not (tmp_path / "PandaJob_1_1" / "ran").exists()


def _job_with_files(panda_id: int, script: str) -> JobSpec:
    from tests.hpc.conftest import shell_job_dict

    data = shell_job_dict(panda_id, script)
    data.update(
        outFiles=f"out{panda_id}.root,log{panda_id}.tgz",
        destinationDblock="mDST.chunks,logFiles",
        fileDestinationSE="EOS,EOS",
        dispatchDblockTokenForOut="NULL,NULL",
        GUID="",
        logFile=f"log{panda_id}.tgz",
        logGUID=f"00000000-0000-0000-0000-00000000000{panda_id}",
    )
    return JobSpec.from_panda(data)


def test_outcome_is_written_in_harvester_format(tmp_path: Path) -> None:
    """worker_attributes.json / jobReport.json / event_status.dump.json, as Harvester's messenger reads them."""
    produce = "printf abc > out1.root; echo 7 events had been written to miniDST; echo End of Job"
    jobs = [
        NodeJob(1, 0, str(tmp_path / "PandaJob_1_1"), _job_with_files(1, produce)),
        NodeJob(2, 1, str(tmp_path / "PandaJob_2_1"), _job_with_files(2, "echo End of Job")),  # no output
    ]
    run_node(jobs, reports_dir=tmp_path / "reports", calibdb_opener=None, payload=SHELL)
    ok_dir = tmp_path / "PandaJob_1_1"
    attrs = json.loads((ok_dir / "worker_attributes.json").read_text())
    assert attrs["jobStatus"] == "finished" and attrs["pilotErrorCode"] == 0 and attrs["nEvents"] == 7
    assert attrs["transExitCode"] == 0 and "startTime" in attrs and attrs["coreCount"] == 1
    dump = json.loads((ok_dir / "event_status.dump.json").read_text())
    by_lfn = {Path(e["path"]).name: e for e in dump["1"]}
    assert by_lfn["out1.root"] == {
        "path": str(ok_dir / "out1.root"),
        "type": "output",
        "fsize": 3,
        "chksum": "024d0127",  # adler32("abc")
        "guid": by_lfn["out1.root"]["guid"],
        "nEvents": 7,  # ours; Harvester's messenger ignores keys it does not know
    }
    assert jobfiles.read_event_counts(ok_dir, 1) == {"out1.root": 7}  # what the daemon reads instead of the logs
    assert by_lfn["log1.tgz"]["type"] == "log" and by_lfn["log1.tgz"]["guid"].endswith("0001")
    report = json.loads((ok_dir / "jobReport.json").read_text())
    assert report["files"]["output"][0]["subFiles"] == [{"name": "out1.root", "nentries": 7}]
    bad = jobfiles.read_outcome(tmp_path / "PandaJob_2_1", 2)
    assert bad is not None and bad.status == "failed" and bad.error_code == ErrorCode.MISSING_OUTPUT
    bad_dump = json.loads((tmp_path / "PandaJob_2_1" / "event_status.dump.json").read_text())
    assert [e["type"] for e in bad_dump["2"]] == ["log"]  # a failed job stages out its log only


@pytest.mark.parametrize(("durable", "syncs_per_job"), [(True, 4), (False, 0)])
def test_outcome_fsyncs_follow_the_job_set(tmp_path: Path, monkeypatch, durable: bool, syncs_per_job: int) -> None:
    """Harvester's job sets (durable): three files fsync'd + one directory fsync per job; the
    daemon's (not durable): none — and the files read back the same either way."""
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    jobs = _node_jobs(tmp_path, {1: "echo End of Job", 2: "echo End of Job"})
    run = NodeRun(jobs, reports_dir=tmp_path / "reports", calibdb_opener=None, payload=SHELL, durable_outcomes=durable)
    run.run()
    assert len(synced) == 2 * syncs_per_job
    found = _results(tmp_path)
    assert sorted(found) == [1, 2] and {o.status for o in found.values()} == {"finished"}
    assert not list(tmp_path.glob("**/.*.tmp"))  # renamed into place either way


def test_lean_outcome_is_the_attributes_alone_with_the_event_counts(tmp_path: Path) -> None:
    """The daemon's job sets (lean_outcomes): one file per job, the per-output counts and the
    (size, adler32) of every file to stage out inside it — taken here, where the data is."""
    produce = "printf abc > out1.root; echo 7 events had been written to miniDST; echo End of Job"
    jobs = [
        NodeJob(1, 0, str(tmp_path / "PandaJob_1_1"), _job_with_files(1, produce)),
        NodeJob(2, 1, str(tmp_path / "PandaJob_2_1"), _job_with_files(2, "echo End of Job")),  # no output
    ]
    run = NodeRun(jobs, reports_dir=tmp_path / "reports", calibdb_opener=None, payload=SHELL, lean_outcomes=True)
    run.run()
    ok_dir = tmp_path / "PandaJob_1_1"
    written = {p.name for p in ok_dir.iterdir() if p.name.endswith(".json")}
    assert written == {"worker_attributes.json"}  # no outputs dump, no job report
    ok = jobfiles.read_outcome(ok_dir, 1)
    assert ok is not None and ok.status == "finished" and ok.n_events == 7
    assert ok.output_events == {"out1.root": 7}  # what the daemon uses instead of the logs
    assert ok.output_sums is not None and ok.output_sums["out1.root"] == (3, "024d0127")  # adler32("abc")
    log_size = (ok_dir / "log1.tgz").stat().st_size
    assert ok.output_sums["log1.tgz"] == (log_size, jobfiles.adler32_of(ok_dir / "log1.tgz"))
    bad = jobfiles.read_outcome(tmp_path / "PandaJob_2_1", 2)
    assert bad is not None and bad.error_code == ErrorCode.MISSING_OUTPUT and bad.output_events == {}
    assert bad.output_sums is not None and set(bad.output_sums) == {"log2.tgz"}  # a failed job: its log only


@pytest.mark.parametrize(
    "value", [None, [1], {"a": [1]}, {"a": [-1, "00000001"]}, {"a": [1, "xyz"]}, {"a": [True, "00000001"]}]
)
def test_unusable_output_sums_are_ignored(value: object) -> None:
    outcome = jobfiles.JobOutcome.from_attributes(1, {"jobStatus": "finished", "outputFiles": value})
    assert outcome is not None and outcome.output_sums is None  # the daemon then reads the files itself


@pytest.mark.parametrize("value", [None, [1], {"a": -1}, {"a": True}, {"a": "7"}, {"a": 1.5}])
def test_unusable_output_events_are_ignored(value: object) -> None:
    attrs = {"jobStatus": "finished", "outputEvents": value}
    outcome = jobfiles.JobOutcome.from_attributes(1, attrs)
    assert outcome is not None and outcome.output_events is None  # the daemon then reads the counts elsewhere


class _FailingCalibDB:
    """Stand-in for a calibdb whose start fails (the calibdb package is another area's,
    and a real start failure depends on its backend); records that stop() was called."""

    stopped = False

    def __init__(self, cfg: Any, *, node_dir: Path | None = None) -> None:
        self.cfg = cfg

    def start(self) -> Any:
        raise CalibDBError("mariadbd exited with status 1 during start")

    def stop(self) -> None:
        _FailingCalibDB.stopped = True


def test_calibdb_failure_fails_every_job_with_1244(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    from compass_pilot.config import CalibDBSection

    results = run_node(
        _node_jobs(tmp_path, {1: "touch ran", 2: "touch ran"}),
        reports_dir=reports,
        calibdb=CalibDBSection(backend="mariadb"),
        calibdb_opener=_FailingCalibDB,
        payload=SHELL,
    )
    assert {i: _code(r) for i, r in results.items()} == {1: 1244, 2: 1244}
    assert "mariadbd exited with status 1" in results[1].error_diag
    assert not list(reports.glob("*.started")) and not list(tmp_path.glob("PandaJob_*/ran"))
    assert _FailingCalibDB.stopped


def test_calib_env_reaches_payloads(tmp_path: Path) -> None:
    class Endpoint:
        backend = "sqlite"

        def __init__(self) -> None:
            self.env = {"CDBSERVER": "node-local-db", "COMPASS_CALIB_DSN": "/x.sqlite"}

    class DB:
        def __init__(self, cfg: Any, *, node_dir: Path | None = None) -> None:
            pass

        def start(self) -> Endpoint:
            return Endpoint()

        def stop(self) -> None:
            pass

    from compass_pilot.config import CalibDBSection

    run_node(
        _node_jobs(tmp_path, {1: 'echo "$CDBSERVER"; echo End of Job'}),
        reports_dir=tmp_path / "r",
        calibdb=CalibDBSection(),
        calibdb_opener=DB,
        payload=SHELL,
    )
    assert (tmp_path / "PandaJob_1_1" / "payload.stdout").read_text() == "node-local-db\nEnd of Job\n"


def test_terminate_and_server_kill(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    run = NodeRun(
        _node_jobs(tmp_path, {1: "sleep 60", 2: "sleep 60", 3: OK}),
        reports_dir=reports,
        calibdb_opener=None,
        kill_check_interval=1,
        term_grace=2,
        payload=SHELL,
    )
    thread = threading.Thread(target=run.run)
    start = time.monotonic()
    thread.start()
    _wait_for(lambda: 3 in _results(tmp_path), 10, "job 3's result")
    (reports / "2.kill").write_text("tobekilled")
    _wait_for(lambda: 2 in _results(tmp_path), 5, "job 2 killed on the server's request")
    run.terminate()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert time.monotonic() - start < 15
    results = _results(tmp_path)
    assert {i: _code(r) for i, r in results.items()} == {1: 1213, 2: 1144, 3: None}
    assert run.terminated


def test_bad_command_fails_only_that_job(tmp_path: Path) -> None:
    jobs = _node_jobs(tmp_path, {1: OK, 2: OK})
    hostile = {**jobs[1].job.raw, "transformation": "compass-demo-reco", "jobPars": "--run $(reboot)"}
    bad = NodeJob(2, 1, jobs[1].workdir, JobSpec.from_panda(hostile))
    results = run_node([jobs[0], bad], reports_dir=tmp_path / "r", calibdb_opener=None, payload=SHELL)
    assert _code(results[1]) is None
    assert _code(results[2]) == ErrorCode.BAD_JOB_SPEC and "jobPars" in results[2].error_diag


# -- under the real mpiexec ---------------------------------------------------------------
NODES, SLOTS = 4, 8


@pytest.fixture()
def mpi_run(tmp_path: Path, mpiexec: str) -> Iterator[Any]:
    """Write a 4 × 8 job set and a local fake-node script; start it; clean up its processes."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(scripts: dict[int, str]) -> tuple[subprocess.Popen[bytes], Path, Any]:
        hpc = HPCSection(max_jobs=NODES * SLOTS, max_nodes=NODES, slots_per_node=SLOTS)
        (sub,) = plan_submissions([shell_job(pid, s) for pid, s in scripts.items()], hpc)
        site = SiteConfig()
        site.payload.commands = ["sh"]
        site.calibdb.scratch_dir = str(tmp_path / "scratch")
        workdirs = {pid: str(tmp_path / "jobs" / f"PandaJob_{pid}_1") for pid in scripts}
        jobset = write_jobset(tmp_path / "jobset.json", sub, config_to_dict(site), workdirs, str(tmp_path))
        agent = [sys.executable, "-m", "hpc.node_agent", "--jobset", str(jobset), "--fake-nodes", "--term-grace", "2"]
        script = render_script(
            sub, launcher="mpiexec", kind="local", workdir=str(tmp_path), agent_cmd=agent, fake_nodes=True
        )
        (tmp_path / "run.sh").write_text(script)
        env = dict(os.environ, PATH=f"{Path(mpiexec).parent}{os.pathsep}{os.environ['PATH']}")
        with open(tmp_path / "batch.log", "wb") as logf:
            proc = subprocess.Popen(
                ["bash", str(tmp_path / "run.sh")],
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        procs.append(proc)
        return proc, tmp_path / "reports", sub

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    # payloads live in their own sessions: make sure none outlives the test
    for pidfile in tmp_path.glob("jobs/*/payload.pid"):
        try:
            os.killpg(int(pidfile.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def test_mpi_32_jobs_one_result_each_and_sigkill_fails_only_that_job(mpi_run, tmp_path: Path) -> None:
    victim = 117
    scripts = {100 + i: OK for i in range(NODES * SLOTS)}
    scripts[victim] = "echo $$ > payload.pid; sleep 30; echo End of Job"
    start = time.monotonic()
    proc, reports, _sub = mpi_run(scripts)
    pidfile = tmp_path / "jobs" / f"PandaJob_{victim}_1" / "payload.pid"
    _wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, "the victim payload to start")
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert proc.wait(timeout=60) == 0, (tmp_path / "batch.log").read_text()
    elapsed = time.monotonic() - start
    results = _results(tmp_path)
    assert sorted(results) == sorted(scripts)  # every job exactly one outcome
    assert {i for i, r in results.items() if r.verdict} == {victim}
    assert results[victim].error_code == ErrorCode.SIGKILL and results[victim].trans_exit_code is None
    assert all(results[i].n_events == 7 for i in scripts if i != victim)
    assert len(list(reports.glob("*.started"))) == NODES * SLOTS
    log = (tmp_path / "batch.log").read_text()
    for rank in range(NODES):
        assert f"node_agent[{rank}] INFO node {rank}: {SLOTS} job(s)" in log
    assert all(line.count("node_agent[") <= 1 for line in log.splitlines())  # no interleaved lines
    assert elapsed < 30


def test_mpi_sigterm_gives_1213_for_killed_payloads(mpi_run, tmp_path: Path) -> None:
    scripts = {200 + i: "sleep 60; echo End of Job" for i in range(NODES * SLOTS)}
    proc, reports, _ = mpi_run(scripts)
    _wait_for(lambda: len(list(reports.glob("*.started"))) == NODES * SLOTS, 30, "32 started markers")
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)  # the script exec'd mpiexec: this is what PBS / Slurm signal
    proc.wait(timeout=30)
    assert time.monotonic() - sent < 15
    results = _results(tmp_path)
    assert sorted(results) == sorted(scripts)
    assert {_code(r) for r in results.values()} == {ErrorCode.BATCH_TIME_LIMIT}
    # the payloads' process groups are gone (SIGKILLed members may take a moment to die)
    groups = {int(p.read_text().split()[0]) for p in reports.glob("*.started")}

    def live_members() -> list[int]:
        return [
            p.pid
            for p in psutil.process_iter(["status"])
            if p.info["status"] != psutil.STATUS_ZOMBIE and _pgid(p.pid) in groups
        ]

    _wait_for(lambda: not live_members(), 5, "the payload process groups to die")


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _agent_under_mpiexec(mpiexec: str, jobset: Path, ranks: int, *extra: str) -> subprocess.CompletedProcess[str]:
    hosts = jobset.parent / "hosts"
    hosts.write_text("".join(f"n{i}:1\n" for i in range(1, ranks + 1)))
    cmd = [
        mpiexec,
        "-launcher",
        "fork",
        "-f",
        str(hosts),
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "hpc.node_agent",
        "--jobset",
        str(jobset),
        "--fake-nodes",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _small_jobset(tmp_path: Path, scripts: dict[int, str], walltime: int | None = None) -> Path:
    hpc = HPCSection(max_jobs=4, max_nodes=4, slots_per_node=1)
    (sub,) = plan_submissions([shell_job(pid, s) for pid, s in scripts.items()], hpc)
    if walltime is not None:
        sub = dataclasses.replace(sub, walltime=walltime)
    site = SiteConfig()
    site.payload.commands = ["sh"]
    site.calibdb.scratch_dir = str(tmp_path / "scratch")
    workdirs = {pid: str(tmp_path / f"PandaJob_{pid}_1") for pid in scripts}
    return write_jobset(tmp_path / "jobset.json", sub, config_to_dict(site), workdirs, str(tmp_path))


def test_mpi_fewer_ranks_than_nodes_fails_orphans_at_once(mpiexec: str, tmp_path: Path) -> None:
    jobset = _small_jobset(tmp_path, {1: OK, 2: OK, 3: OK, 4: OK})  # 4 nodes × 1 slot
    done = _agent_under_mpiexec(mpiexec, jobset, 2)
    assert done.returncode == ExitCode.FAILURE, done.stderr  # the worker did not run as planned
    results = _results(tmp_path)
    assert {i: _code(r) for i, r in results.items()} == {1: None, 2: None, 3: ErrorCode.GENERAL, 4: ErrorCode.GENERAL}
    assert "no MPI rank was started for node 2" in results[3].error_diag


def test_mpi_payloads_inherit_no_descriptor_of_the_launcher(mpiexec: str, tmp_path: Path) -> None:
    """hydra hands each rank its PMI socket; a payload (posix_spawn closes nothing) must get only 0, 1, 2."""
    # stat each descriptor number of the payload shell itself: no pipe, no listing of its own fd dir
    fds = 'for n in $(seq 3 64); do [ -e /proc/$$/fd/$n ] && printf "%s " $n; done; echo none; echo End of Job'
    jobset = _small_jobset(tmp_path, {1: fds, 2: fds})
    done = _agent_under_mpiexec(mpiexec, jobset, 2)
    assert done.returncode == ExitCode.OK, done.stderr
    for pid in (1, 2):
        assert (tmp_path / f"PandaJob_{pid}_1" / "payload.stdout").read_text().splitlines()[0] == "none"


def test_lean_agent_command_runs_without_site_or_the_submitters_environment(tmp_path: Path) -> None:
    """hpc.launch's argv (-S -E, the import path on the command line) runs a real agent from any
    directory, with no PYTHONPATH, and gets this package and the third-party ones it may need."""
    from hpc.launch import agent_command

    jobset = _small_jobset(tmp_path, {1: OK})
    argv = agent_command(str(jobset), fake_nodes=True)
    assert argv[:3] == [sys.executable, "-S", "-E"] and "hpc.node_agent" in " ".join(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PMI_RANK="0", PMI_SIZE="1", PYTHONPATH="/nonexistent", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == ExitCode.OK, done.stderr
    assert {i: _code(r) for i, r in _results(tmp_path).items()} == {1: None}
    check = "import sys;sys.path[:0]=sys.argv[1].split(':');import psutil;f=sys.flags;"
    check += "print(f.no_site,f.ignore_environment)"
    probe = [*argv[:3], "-c", check, argv[5]]  # the same flags and import path: a third-party package resolves
    seen = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=60)
    assert seen.stdout.split() == ["1", "1"], seen.stderr
    assert agent_command("j.json", python="/other/python")[:3] == ["/other/python", "-m", "hpc.node_agent"]


def test_mpi_walltime_guard_ends_payloads_before_the_batch_limit(mpiexec: str, tmp_path: Path) -> None:
    jobset = _small_jobset(tmp_path, {1: "sleep 60", 2: "sleep 60"}, walltime=3)
    start = time.monotonic()
    done = _agent_under_mpiexec(mpiexec, jobset, 2, "--walltime-guard", "1", "--term-grace", "1")
    assert done.returncode == ExitCode.INTERRUPTED_SIGTERM, done.stderr  # ended by the time limit: worker failed
    assert 2 <= time.monotonic() - start < 15
    assert {i: _code(r) for i, r in _results(tmp_path).items()} == {1: 1213, 2: 1213}


def test_rank_from_the_launcher_matches_mpi(mpiexec: str, tmp_path: Path) -> None:
    """Under hydra the agent reads its rank from PMI_RANK/PMI_SIZE; MPI_Init must agree."""
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"n{i}:1\n" for i in range(1, 5)))
    probe = (
        "import os; from hpc.node_agent import _rank_and_size; r, n = _rank_and_size(); "
        'os.write(1, f\'{r} {n} {"mpi4py.MPI" in __import__("sys").modules}\\n\'.encode())'
    )
    seen = {}
    for source in ("launcher", "mpi"):
        done = subprocess.run(
            [mpiexec, "-launcher", "fork", "-f", str(hosts), "-n", "4", sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, COMPASS_AGENT_RANK_FROM=source),
            cwd=Path(__file__).resolve().parents[2],
        )
        assert done.returncode == 0, done.stderr
        seen[source] = sorted(done.stdout.split("\n")[:-1])
    assert seen["launcher"] == ["0 4 False", "1 4 False", "2 4 False", "3 4 False"]  # no MPI_Init
    assert seen["mpi"] == ["0 4 True", "1 4 True", "2 4 True", "3 4 True"]


def test_wakeups_tell_the_daemon_after_each_file(tmp_path: Path) -> None:
    """One S datagram for the whole start pass (after the markers), an E after each outcome file."""
    import select

    from hpc import notify

    listener = notify.NotifyListener("127.0.0.1", 0)
    key = notify.new_key()
    listener.add("sub-1", key)
    reports = tmp_path / "reports"
    jobs = _node_jobs(tmp_path, {1: OK, 2: "sleep 1; exit 3", 3: "sleep 1.5; echo End of Job"})
    target = notify.NotifyTarget("127.0.0.1", listener.port, "sub-1", key)
    run = NodeRun(jobs, reports_dir=reports, calibdb_opener=None, payload=SHELL, notify_target=target)
    thread = threading.Thread(target=run.run)
    thread.start()
    seen: list[tuple[str, tuple[int, ...]]] = []
    try:
        while sum(len(ids) for kind, ids in seen if kind == notify.ENDED) < 3:
            assert select.select([listener], [], [], 20)[0], f"no wake-up within 20 s; got {seen}"
            for notice in listener.drain():
                assert notice.sub_id == "sub-1"
                seen.append((notice.kind, notice.panda_ids))
                for pid in notice.panda_ids:  # the files are there before the datagram
                    if notice.kind == notify.STARTED:
                        assert (reports / f"{pid}.started").exists()
                    else:
                        assert jobfiles.read_outcome(tmp_path / f"PandaJob_{pid}_1", pid) is not None
    finally:
        thread.join(timeout=20)
        listener.close()
    assert seen[0] == (notify.STARTED, (1, 2, 3))  # one datagram for the whole start pass
    assert sorted(pid for kind, ids in seen[1:] for pid in ids if kind == notify.ENDED) == [1, 2, 3]
    assert [kind for kind, _ in seen].count(notify.STARTED) == 1


def test_agent_waits_for_a_job_set_written_after_it_started(tmp_path: Path) -> None:
    """The daemon submits while it stages in: the agent (``--jobset-wait``) starts before its job
    set exists, waits for it (inotify on the submission dir) and runs the jobs once it is there."""
    from hpc.launch import agent_command

    ready = _small_jobset(tmp_path, {1: OK})
    jobset = ready.with_name("later.json")  # the name the agent is given: not there yet
    env = dict(os.environ, PMI_RANK="0", PMI_SIZE="1")
    agent = subprocess.Popen(
        agent_command(str(jobset), fake_nodes=True, jobset_wait=60), env=env, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    try:
        assert agent.stderr is not None
        for line in agent.stderr:  # the job set is written only once the agent says it waits
            lines.append(line)
            if "waiting up to 60 s for the job set" in line:
                ready.rename(jobset)  # the daemon's atomic rename
        assert agent.wait(60) == ExitCode.OK, "".join(lines)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert jobset.exists()
    assert {i: _code(r) for i, r in _results(tmp_path).items()} == {1: None}


def test_agent_without_a_job_set_after_its_wait_exits_2(tmp_path: Path) -> None:
    from hpc.launch import agent_command

    argv = agent_command(str(tmp_path / "never.json"), fake_nodes=True, jobset_wait=0.5)
    assert argv[-2:] == ["--jobset-wait", "0.5"]
    env = dict(os.environ, PMI_RANK="0", PMI_SIZE="1")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "no job set" in done.stderr and "after 0.5 s" in done.stderr
    assert agent_command("j.json")[-2:] == ["--jobset", "j.json"]  # no wait unless asked: Harvester's workers
