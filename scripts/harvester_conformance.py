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
imports top-level), a private ``PANDA_HOME`` with a minimal ``panda_harvester.cfg`` is
written, and then the plugins get Harvester's own WorkSpec / JobSpec / FileSpec /
PluginBase, the job attributes go through Harvester's own
``core_utils.update_job_attributes_with_workers``, and each agent step is the one in
``harvester_plugins.replay`` (which cites the agents' lines).  Without it, the same
steps run on ``compat``'s mirrors — what CI does (tests/harvester/test_conformance.py).

Exit code: 0 when every row matches its expectation and the sizing check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

N_EVENTS = 20
EXPECTED = {0: "finished", 1: "finished", 2: "finished", 3: "failed 1305", 4: "failed 1305", 5: "failed 1331"}


def use_harvester(src: Path, home: Path) -> None:
    """Make ``pandaharvester`` from ``src`` importable and configured (sqlite DB under ``home``)."""
    if not (src / "pandaharvester" / "harvestercore").is_dir():
        raise SystemExit(f"{src}: not an HSF/harvester source tree (no pandaharvester/harvestercore)")
    import pandacommon

    etc = home / "etc" / "panda"
    etc.mkdir(parents=True, exist_ok=True)
    (home / "log").mkdir(exist_ok=True)
    (etc / "panda_harvester.cfg").write_text(
        textwrap.dedent(
            f"""\
            [master]
            uname = root
            gname = root
            harvester_id = compass-conformance
            [db]
            database_filename = {home}/harvester.db
            engine = sqlite
            verbose = False
            nConnections = 1
            useInspect = False
            [qconf]
            configFile = panda_queueconfig.json
            queueList = ALL
            [payload_interaction]
            workerAttributesFile = worker_attributes.json
            jobReportFile = jobReport.json
            eventStatusDumpJsonFile = event_status.dump.json
            eventStatusDumpXmlFile = _event_status.dump
            jobRequestFile = worker_requestjob.json
            jobSpecFile = HPCJobs.json
            eventRequestFile = worker_requestevents.json
            eventRangesFile = JobsEventRanges.json
            updateEventsFile = worker_updateevents.json
            xmlPoolCatalogFile = PFC.xml
            pandaIDsFile = worker_pandaids.json
            [log_level]
            """
        )
    )
    (etc / "panda_common.cfg").write_text(
        f"[logger]\nlogdir = {home}/log\nlog_level = DEBUG\nloghost = localhost\nmonport-apache = 9\n"
        "monurlprefix = /nowhere\nmethod = POST\nencoding = utf-8\n"
    )
    os.environ["PANDA_HOME"] = str(home)
    sys.path[:0] = [str(src), str(Path(pandacommon.__file__).parent)]  # Harvester imports pandalogger & co top-level


def make_world(base: Path, batch_url: str) -> tuple[Any, Path, list[dict[str, Any]], dict[int, str]]:
    """Dispatcher with a 6-job reco task, storage, calibration snapshot, site file; returns the jobs."""
    import yaml

    import calibdb
    from compass_pilot.config import config_to_dict, load_site_config
    from compass_pilot.demo.rawdata import make_production_input
    from compass_pilot.panda.client import PandaClient
    from compass_pilot.panda.dispatcher import Dispatcher, submit_task

    chunks = make_production_input(base / "castor", 2016, "W14", {275678: 6}, n_events=N_EVENTS)
    db = str(base / "panda.sqlite")
    dispatcher = Dispatcher(db, port=0, check_interval=60)
    dispatcher.start()
    task = {
        "name": "harvester-conformance",
        "prod": "P09",
        "year": 2016,
        "period": "W14",
        "job_type": "reco",
        "sw_release": "slt2-phast7",
        "slt": 2,
        "phast": 7,
        "max_attempts": 1,
        "max_walltime": 600,
        "chunks": [c.raw_path for c in chunks],
        "inject": {chunks[3].raw_name: "crash", chunks[4].raw_name: "crash"},
    }
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
    qdict["preparator"]["localBasePath"] = str(base / "harvester" / "inputs")
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


def run(base: Path, batch_url: str, timeout: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from harvester_plugins import compat
    from harvester_plugins.replay import AgentCycle

    dispatcher, site_file, job_dicts, expected = make_world(base, batch_url)
    try:
        name, qdict = queue(site_file, base)
        cycle = AgentCycle(name, qdict)
        cycle.fetch(job_dicts)
        cycle.prepare()
        workers = cycle.submit()
        cycle.wait_workers(timeout)
        cycle.stage_out()
        rows = []
        for job in cycle.jobs:
            code = job.get_one_attribute("pilotErrorCode")
            got = job.status if job.status != "failed" else f"failed {code}"
            rows.append(
                {
                    "PandaID": job.PandaID,
                    "expected": expected[job.PandaID],
                    "harvester": f"{job.status}/{job.subStatus}",
                    "code": code,
                    "outputs": outputs_at_destination(job, base / "eos"),
                    "ok": got == expected[job.PandaID]
                    and (job.status != "finished" or outputs_at_destination(job, base / "eos").startswith("3/3")),
                }
            )
        cycle.sweep()
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
            "harvester": "real classes" if compat.HAVE_HARVESTER else "compat mirror",
            "workers": worker_info,
            "sizing_5_waiting": made,
            "sizing_ok": made == [5],
        }
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--harvester-src", type=Path, help="HSF/harvester source tree (with pandaharvester/)")
    parser.add_argument("--batch-url", default="fork://localhost", help="radical.saga URL of the batch system")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir, removed)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the worker")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="harvester-conformance-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        if args.harvester_src:
            use_harvester(args.harvester_src.resolve(), base / "panda_home")
        rows, summary = run(base, args.batch_url, args.timeout)
    finally:
        if args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps({"rows": rows, **summary}))
    else:
        print_table(rows, summary)
    return 0 if all(r["ok"] for r in rows) and summary["sizing_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
