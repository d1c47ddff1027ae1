#!/usr/bin/env python3
"""Harvester conformance: Harvester's agents, our plugins, jobs from our dispatcher — the true outcome per job.

    python scripts/harvester_conformance.py [--harvester-src DIR] [--batch-url fork://localhost] [--json]

Six reco jobs come from the embedded dispatcher: three succeed, two payloads crash
(1305), one input is missing from storage (1331).  Then one cycle of each agent —
JobFetcher's conversion, Preparator, Submitter, Monitor (until the worker ends),
Stager, Sweeper — runs our plugins (queue config of ``queue_config_for_site``: the
same seven sections ``docs/panda_queueconfig.json`` shows) on a real batch system
(radical.saga ``fork://`` by default, ``slurm://localhost`` on the tests' Slurm), and
a table shows, per job: what should happen, the status Harvester ends with, its error
code, and the outputs found at the destination with their adler32 checked against
what the node agent listed.  A second round checks the sizing: 5 waiting jobs must
make ONE worker of 5 jobs with ``nJobs`` 5.

``--harvester-src DIR``: an HSF/harvester source tree (never part of this repository).
Its ``pandaharvester`` is put on ``sys.path`` (with panda-common's modules, which it
imports top-level, and pilot3's error table from the sdist scripts/install_deps.sh
caches), a private ``PANDA_HOME`` gets Harvester's own config template with a sqlite
DB, our dispatcher as PanDA server (v1 API, bearer token) and 1 s agent intervals, and
then Harvester's OWN agents run single-mode on its own DB: the jobs go in as its
JobFetcher converts them, then Preparator ×2, Submitter, Monitor (until the jobs end),
Stager ×3, Monitor, Propagator (final states to our dispatcher) and Sweeper; the table
is read back from Harvester's DB.  Needs Harvester's Python deps (``pip install
panda-common python-daemon rpyc pyjwt pycryptodomex polars``).  ``--replay`` instead
replays the agents' calls (``harvester_plugins.replay``) on Harvester's classes.
Without ``--harvester-src`` the replay runs on ``compat``'s mirrors — what CI does
(tests/harvester/test_conformance.py).

Exit code: 0 when every row matches its expectation and the sizing check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

N_EVENTS = 20
EXPECTED = {0: "finished", 1: "finished", 2: "finished", 3: "failed 1305", 4: "failed 1305", 5: "failed 1331"}


def use_harvester(src: Path, home: Path, panda_url: str) -> None:
    """Make ``pandaharvester`` from ``src`` importable and configured (sqlite DB under ``home``).

    The configuration is Harvester's own template (``templates/panda/panda_harvester.cfg
    .rpmnew.template`` of the tree) with the DB, the queue config file, the PanDA URLs
    (our dispatcher) and this instance's id filled in; Harvester reads it at import.
    """
    if not (src / "pandaharvester" / "harvestercore").is_dir():
        raise SystemExit(f"{src}: not an HSF/harvester source tree (no pandaharvester/harvestercore)")
    import configparser

    import pandacommon

    etc = home / "etc" / "panda"
    etc.mkdir(parents=True, exist_ok=True)
    (home / "log").mkdir(exist_ok=True)
    cfg = configparser.RawConfigParser(interpolation=None)
    cfg.optionxform = str  # type: ignore[assignment,method-assign]
    cfg.read(src / "templates" / "panda" / "panda_harvester.cfg.rpmnew.template")
    cfg["master"].update(harvester_id="compass-conformance", uname="root", gname="root")
    cfg["db"].update(database_filename=str(home / "harvester.db"), nConnections="4", engine="sqlite")
    cfg["qconf"].update(configFile=str(etc / "panda_queueconfig.json"), queueList="ALL")
    api = panda_url.replace("/server/panda", "/api/v1")
    cfg["pandacon"].update(
        pandaURL=panda_url,
        pandaURLSSL=panda_url,
        pandaCacheURL_W=panda_url,
        server_api_url=api,
        server_api_url_ssl=api,
        cache_api_url_ssl=api,
        auth_type="oidc",  # loopback dispatcher: a bearer token instead of a grid certificate
        auth_token="compass-conformance",
        auth_origin="compass",
        verbose="False",
    )
    for section in ("preparator", "submitter", "monitor", "stager", "sweeper", "propagator"):
        if "nThreads" in cfg[section]:
            cfg[section]["nThreads"] = "1"
        for key in ("checkInterval", "triggerInterval", "zipInterval", "lookupTime", "updateInterval"):
            if key in cfg[section]:  # one cycle must see what the previous agent just did
                cfg[section][key] = "1"
    with open(etc / "panda_harvester.cfg", "w") as handle:
        cfg.write(handle)
    (etc / "panda_common.cfg").write_text(
        f"[logger]\nlogdir = {home}/log\nlog_level = DEBUG\nloghost = localhost\nmonport-apache = 9\n"
        "monurlprefix = /nowhere\nmethod = POST\nencoding = utf-8\n"
    )
    os.environ["PANDA_HOME"] = str(home)
    sys.path[:0] = [str(src), str(Path(pandacommon.__file__).parent)]  # Harvester imports pandalogger & co top-level
    try:  # Harvester's pilot_errors imports pilot3's error table
        import pilot.common.errorcodes  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(_pilot3_source(home)))


def _pilot3_source(home: Path) -> Path:
    """pilot3's source from the sdist scripts/install_deps.sh caches (tests/pilot3 runs the same one)."""
    import tarfile

    cache = Path(os.environ.get("COMPASS_PILOT_CACHE", Path.home() / ".cache" / "compass-pilot"))
    sdists = sorted(cache.glob("panda-pilot-*.tar.gz"))
    if not sdists:
        raise SystemExit(
            f"Harvester needs pilot3's error codes: no panda-pilot sdist in {cache} (run scripts/install_deps.sh)"
        )
    with tarfile.open(sdists[-1]) as tar:
        tar.extractall(home / "pilot3", filter="data")
    return next((home / "pilot3").glob("panda-pilot-*"))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_world(base: Path, batch_url: str, port: int = 0) -> tuple[Any, Path, list[dict[str, Any]], dict[int, str]]:
    """Dispatcher with a 6-job reco task, storage, calibration snapshot, site file; returns the jobs."""
    import yaml

    import calibdb
    from compass_pilot.config import config_to_dict, load_site_config
    from compass_pilot.demo.rawdata import make_production_input
    from compass_pilot.panda.client import PandaClient
    from compass_pilot.panda.dispatcher import Dispatcher, submit_task
    from tests.tasks import reco_task

    chunks = make_production_input(base / "castor", 2016, "W14", {275678: 6}, n_events=N_EVENTS)
    db = str(base / "panda.sqlite")
    dispatcher = Dispatcher(db, port=port, check_interval=60)
    dispatcher.start()
    task = reco_task(
        [c.raw_path for c in chunks],
        name="harvester-conformance",
        inject={chunks[3].raw_name: "crash", chunks[4].raw_name: "crash"},
    )
    submit_task(db, task)
    site = load_site_config(None)
    site.panda.url = dispatcher.url
    site.storage.input_root, site.storage.output_root = str(base / "castor"), str(base / "eos")
    site.calibdb.snapshot = str(calibdb.demo_snapshot("sqlite", base / "calib"))
    site.calibdb.scratch_dir = str(base / "scratch")
    site.hpc.batch_url = batch_url
    site.hpc.launcher = "srun" if batch_url.startswith("slurm") else "mpiexec"
    site.hpc.max_nodes, site.hpc.slots_per_node, site.hpc.max_jobs = 2, 4, 8
    site.hpc.shared_dir = str(base / "hpc")
    site.site.workdir = str(base / "work")
    site_file = base / "site.yaml"
    site_file.write_text(yaml.safe_dump(config_to_dict(site)))
    site = load_site_config(site_file)
    jobs = PandaClient(site.panda, site.site).get_jobs(6)
    if len(jobs) != 6:
        raise SystemExit(f"the dispatcher handed out {len(jobs)} jobs, expected 6")
    by_raw = {c.raw_name: i for i, c in enumerate(chunks)}
    expected = {int(j["PandaID"]): EXPECTED[by_raw[j["inFiles"]]] for j in jobs}
    missing = next(c for c in chunks if EXPECTED[by_raw[c.raw_name]].endswith("1331"))
    (base / "castor" / missing.raw_path).unlink()  # gone from storage after the job was defined
    return dispatcher, site_file, jobs, expected


def queue(site_file: Path, base: Path) -> tuple[str, dict[str, Any]]:
    import harvester_plugins
    from compass_pilot.config import load_site_config

    site = load_site_config(site_file)
    qdict = harvester_plugins.queue_config_for_site(site, access_point=str(base / "harvester" / "${workerID}"))
    qdict["common"]["localBasePath"] = str(base / "harvester" / "inputs")
    return site.site.name, qdict


def outputs_at_destination(job: Any, output_root: Path) -> str:
    """'3/3 adler32 ok' when every transferred output is at the destination with the listed checksum."""
    from compass_pilot.experiment import compass
    from compass_pilot.job import JobSpec
    from harvester_plugins.jobfiles import adler32_of

    ours = JobSpec.from_panda(job.jobParams)
    specs = {s.lfn: s for s in ours.output_files}
    wanted = [f for f in job.outFiles if f.fileType == "output"]
    if not wanted:
        return "-"
    good = 0
    for f in wanted:
        dest = output_root / compass.output_dest_path(ours, specs[f.lfn])
        if f.status == "finished" and dest.is_file() and adler32_of(dest) == str(f.chksum).split(":")[-1]:
            good += 1
    return f"{good}/{len(wanted)} adler32 ok"


def row(job: Any, expected: str, output_root: Path) -> dict[str, Any]:
    code = job.get_one_attribute("pilotErrorCode")
    outputs = outputs_at_destination(job, output_root)
    got = job.status if job.status != "failed" else f"failed {code}"
    return {
        "PandaID": job.PandaID,
        "expected": expected,
        "harvester": f"{job.status}/{job.subStatus}",
        "code": code,
        "outputs": outputs,
        "ok": got == expected and (job.status != "finished" or outputs.startswith("3/3")),
    }


def replay_agents(base: Path, name: str, qdict: dict[str, Any], job_dicts: list[dict[str, Any]], timeout: float) -> Any:
    """The agents' calls replayed (harvester_plugins.replay); returns (jobs, workers)."""
    from harvester_plugins.replay import AgentCycle

    cycle = AgentCycle(name, qdict)
    cycle.fetch(job_dicts)
    cycle.prepare()
    workers = cycle.submit()
    cycle.wait_workers(timeout)
    cycle.stage_out()
    cycle.sweep()
    return cycle.jobs, workers


def harvester_agents(
    base: Path, name: str, qdict: dict[str, Any], job_dicts: list[dict[str, Any]], timeout: float
) -> Any:
    """Harvester's own agents, single mode, on its own sqlite DB; returns (jobs, workers) read back from it."""
    import threading
    import time

    from pandaharvester.harvesterbody.monitor import Monitor
    from pandaharvester.harvesterbody.preparator import Preparator
    from pandaharvester.harvesterbody.propagator import Propagator
    from pandaharvester.harvesterbody.stager import Stager
    from pandaharvester.harvesterbody.submitter import Submitter
    from pandaharvester.harvesterbody.sweeper import Sweeper
    from pandaharvester.harvestercore import core_utils
    from pandaharvester.harvestercore.communicator_pool import CommunicatorPool
    from pandaharvester.harvestercore.db_proxy_pool import DBProxyPool
    from pandaharvester.harvestercore.file_spec import FileSpec
    from pandaharvester.harvestercore.job_spec import JobSpec
    from pandaharvester.harvestercore.queue_config_mapper import QueueConfigMapper

    etc = Path(os.environ["PANDA_HOME"]) / "etc" / "panda"
    qdict = dict(qdict, queueStatus="online", nQueueLimitWorker=1, maxWorkers=1, nQueueLimitJob=6)
    (etc / "panda_queueconfig.json").write_text(json.dumps({name: qdict}))
    comm, qcm, db = CommunicatorPool(), QueueConfigMapper(), DBProxyPool()
    db.make_tables(qcm, comm)
    queue_config = qcm.get_queue(name)
    # JobFetcher's conversion (job_fetcher.py l. 116-154) of the jobs our dispatcher handed out
    now = core_utils.naive_utcnow()
    jobs = []
    for data in job_dicts:
        job = JobSpec()
        job.convert_job_json(dict(data))
        job.computingSite, job.status, job.subStatus = name, "starting", "fetched"
        job.creationTime = job.stateChangeTime = now
        job.configID = queue_config.configID
        for lfn, attrs in job.get_input_file_attributes().items():
            spec = FileSpec()
            spec.PandaID, spec.taskID, spec.lfn, spec.scope = job.PandaID, job.taskID, lfn, attrs["scope"]
            spec.endpoint, spec.fileType, spec.status = queue_config.ddmEndpointIn, "input", "to_prepare"
            job.add_in_file(spec)
        job.trigger_propagation()
        jobs.append(job)
    db.insert_jobs(jobs)
    ids = [j.PandaID for j in jobs]

    def cycle(agent: Any) -> None:
        agent.run()  # single mode: one pass of the agent's loop

    pause = threading.Event()
    cycle(Preparator(comm, qcm, single_mode=True))
    cycle(Preparator(comm, qcm, single_mode=True))  # the check / resolve pass
    cycle(Submitter(qcm, single_mode=True))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cycle(Monitor(qcm, single_mode=True))
        current = [db.get_job(i) for i in ids]
        if all(j.status in ("finished", "failed", "cancelled") for j in current):
            break
        pause.wait(2)
    for _ in range(3):  # trigger, check, (zip) passes
        cycle(Stager(qcm, single_mode=True))
    for _ in range(3):  # the worker leaves running/idle once nothing is left to stage out
        cycle(Monitor(qcm, single_mode=True))
        if all(w.is_final_status() for i in ids for w in db.get_workers_with_job_id(i)):
            break
        pause.wait(2)
    cycle(Propagator(comm, qcm, single_mode=True))
    cycle(Sweeper(qcm, single_mode=True))
    final = [db.get_job(i) for i in ids]  # with its files
    workers = {w.workerID: w for i in ids for w in db.get_workers_with_job_id(i)}
    return final, list(workers.values())


def run(
    base: Path, batch_url: str, timeout: float, *, port: int = 0, agents: bool = False
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from harvester_plugins import compat
    from harvester_plugins.replay import AgentCycle

    dispatcher, site_file, job_dicts, expected = make_world(base, batch_url, port)
    try:
        name, qdict = queue(site_file, base)
        drive = harvester_agents if agents else replay_agents
        jobs, workers = drive(base, name, qdict, job_dicts, timeout)
        rows = [row(job, expected[job.PandaID], base / "eos") for job in jobs]
        worker_info = [{"workerID": w.workerID, "nJobs": w.nJobs, "status": w.status} for w in workers]
        # sizing: 5 waiting jobs, the maker's own size → one 5-job worker
        sizing = AgentCycle(name, qdict)
        for i in range(5):
            job = compat.job_spec_from_panda(dict(job_dicts[0], PandaID=900000 + i))
            job.computingSite, job.subStatus = name, "prepared"
            sizing.jobs.append(job)
        waiting = [j for j in sizing.jobs if j.subStatus == "prepared"]
        n = sizing.plugin("workerMaker", dbInterface=_Waiting(waiting)).get_num_jobs_per_worker(1)
        chunks = compat.job_chunks_for_workers(waiting, 1, 0, n)
        made = []
        for chunk in chunks:
            ws = sizing.plugin("workerMaker").make_worker(chunk, None, "managed", "SCORE")
            ws.set_jobspec_list(chunk)
            ws.set_num_jobs_with_list()
            made.append(ws.nJobs)
        summary = {
            "harvester": ("Harvester's agents" if agents else "replay on Harvester's classes")
            if compat.HAVE_HARVESTER
            else "replay on compat's mirror",
            "workers": worker_info,
            "sizing_5_waiting": made,
            "sizing_ok": made == [5],
            "dispatcher": dispatcher.summary().get("jobs_by_status"),
            # what Harvester's propagator told the server about its workers (/api/v1/harvester/update_workers)
            "workers_at_dispatcher": [
                {"workerID": r["worker_id"], "status": r["status"], "nJobs": r["n_jobs"]}
                for r in dispatcher.store.query("SELECT worker_id, status, n_jobs FROM harvester_workers")
            ],
        }
        if agents:  # the server must know each worker's final state as Harvester does
            told = {(w["workerID"], w["status"]) for w in summary["workers_at_dispatcher"]}
            summary["propagated_ok"] = told == {(w["workerID"], w["status"]) for w in worker_info}
        return rows, summary
    finally:
        dispatcher.stop()


class _Waiting:
    def __init__(self, jobs: list[Any]) -> None:
        self.dbProxy, self.jobs = self, jobs

    def get_jobs_in_sub_status(self, sub_status: str, max_jobs: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [j for j in self.jobs if j.subStatus == sub_status][:max_jobs]


def print_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    header = (
        f"{'PandaID':>8}  {'expected':<12}  {'Harvester status':<28}  {'code':>5}  {'outputs at destination':<22}  ok"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        code = "" if r["code"] is None else r["code"]
        line = f"{r['PandaID']:>8}  {r['expected']:<12}  {r['harvester']:<28}  {code!s:>5}  {r['outputs']:<22}  "
        print(line + ("yes" if r["ok"] else "NO"))
    print(f"Harvester classes: {summary['harvester']}; workers: {summary['workers']}")
    print(f"sizing: 5 waiting jobs → workers of {summary['sizing_5_waiting']} job(s) (nJobs)")
    print(f"dispatcher: {summary['dispatcher']}")
    if "propagated_ok" in summary:
        verdict = "as in Harvester's DB" if summary["propagated_ok"] else "DIFFERENT from Harvester's DB"
        print(f"workers the propagator reported to the dispatcher: {summary['workers_at_dispatcher']} ({verdict})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--harvester-src", type=Path, help="HSF/harvester source tree (with pandaharvester/)")
    parser.add_argument("--batch-url", default="fork://localhost", help="radical.saga URL of the batch system")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir, removed)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the worker")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--replay", action="store_true", help="with --harvester-src: replay the agents' calls instead")
    args = parser.parse_args(argv)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="harvester-conformance-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        port = free_port()
        if args.harvester_src:
            use_harvester(args.harvester_src.resolve(), base / "panda_home", f"http://127.0.0.1:{port}/server/panda")
        agents = bool(args.harvester_src) and not args.replay
        rows, summary = run(base, args.batch_url, args.timeout, port=port, agents=agents)
    finally:
        if args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps({"rows": rows, **summary}))
    else:
        print_table(rows, summary)
    ok = all(r["ok"] for r in rows) and summary["sizing_ok"] and summary.get("propagated_ok", True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
