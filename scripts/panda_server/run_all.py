#!/usr/bin/env python3
"""Our grid pilot and daemon against the REAL PanDA server: success, payload failure, server kill, bulk of 8.

    scripts/panda_server/setup_db.sh SCHEMA_DIR STATE
    scripts/panda_server/setup_server.sh STATE
    scripts/panda_server/run_all.py STATE [--scenarios ok,fail,kill,bulk]

(as root; ``SCHEMA_DIR`` is PanDAWMS/panda-database's ``schema/postgres``).  It starts
Apache with the server (``PANDA_HOME=STATE``), defines the queue in ``schedconfig_json``,
submits COMPASS reco jobs made by our own task rules through ``/api/v1/job/submit`` (as the
production DN of STATE/pki), runs ``compass-pilot grid`` (v1 dialect, the client cert as
X509 proxy) and ``compass-pilot daemon --once`` (fork batch system, fake nodes), kills one
job through ``/api/v1/job/kill``, runs the Adder (``add_main``) until the jobs are archived,
and prints: job × state × error code × per-file nEvents × pilot ID × node, from the DB.

CI has no GitHub and no such server: this is what a developer runs before touching the wire.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from compass_pilot.demo.rawdata import make_production_input  # noqa: E402
from compass_pilot.panda.jobdict import complete  # noqa: E402
from compass_pilot.panda.tasks import build_jobs  # noqa: E402

QUEUE = "COMPASS_LOCAL"
QUEUE_DATA = {
    "nickname": QUEUE,
    "status": "online",
    "cloud": "CERN",
    "type": "production",
    "tier": "T2",
    "corecount": 1,
    "maxwdir": 100000,
    "mintime": 0,
    "maxtime": 0,
    "pledgedcpu": 0,
    "maxrss": 0,
    "minrss": 0,
    "memory": 0,
    "space": 0,
    "maxinputsize": 0,
    "capability": "score",
    "catchall": "",
    "workflow": "pull_ups",
    "jobseed": "std",
    "wnconnectivity": "full",
    "is_cvmfs": False,
    "direct_access_lan": False,
    "direct_access_wan": False,
    "ddm": "",
}


DB_PORT = [54329]  # setup_db.sh's port, --db-port


def psql(state: Path, sql: str) -> list[list[str]]:
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(DB_PORT[0]), "-U", "postgres", "-d", "panda_db", "-tAF", "\t", "-c", sql],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def wait_port(port: int, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def server_env(state: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "PANDA_HOME": str(state),
        "PANDA_BEHIND_REAL_LB": "1",
        "PANDACACHE_URL": f"https://localhost:{port}/cache",
        "PANDA_URL_SSL": f"https://localhost:{port}/server/panda",
        "PANDA_URL": f"https://localhost:{port}/server/panda",
    }


class Server:
    """The real server: Apache in the foreground, its HTTPS session as the production DN."""

    def __init__(self, state: Path, port: int) -> None:
        self.state, self.port = state, port
        self.url = f"https://localhost:{port}"
        self.http = requests.Session()
        self.http.cert = str(state / "pki" / "client-proxy.pem")
        self.http.verify = str(state / "pki" / "ca.pem")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = self.state / "apache" / "httpd.conf"
        self.proc = subprocess.Popen(
            ["apache2", "-f", str(conf), "-DFOREGROUND"], env=server_env(self.state, self.port)
        )
        wait_port(self.port, 30)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)

    def post(self, path: str, data: dict[str, Any]) -> Any:
        answer = self.http.post(
            f"{self.url}{path}",
            json=data,
            headers={"Accept": "application/json"},
            timeout=120,
            verify=self.http.verify,  # per request: REQUESTS_CA_BUNDLE would override the session's
        )
        answer.raise_for_status()
        return answer.json()

    def submit(self, jobs: list[dict[str, Any]]) -> list[int]:
        venv_python = self.state / "venv" / "bin" / "python"
        dump = subprocess.run(
            [str(venv_python), str(Path(__file__).with_name("make_jobs.py")), QUEUE],
            input=json.dumps(jobs),
            capture_output=True,
            text=True,
            check=True,
            env=server_env(self.state, self.port),
        ).stdout
        answer = self.post("/api/v1/job/submit", {"jobs": dump.strip()})
        if not answer.get("success"):
            raise SystemExit(f"submit refused: {answer}")
        if any(str(item[0]) == "NULL" for item in answer["data"]):
            raise SystemExit(f"submit: jobs not stored: {answer}")
        return [int(item[0]) for item in answer["data"]]


def our_jobs(base: Path, n: int, first_chunk: int, inject: str | None = None) -> list[dict[str, Any]]:
    """COMPASS reco jobs from our task rules, with the getJob fields the real server would fill."""
    chunks = make_production_input(base / "castor", 2016, "W14", {275678: n}, n_events=20, first_chunk=first_chunk)
    task = {
        "name": "realserver",
        "prod": "P09",
        "year": 2016,
        "period": "W14",
        "job_type": "reco",
        "slt": 2,
        "phast": 7,
        "max_walltime": 3600,
        "chunks": [c.raw_path for c in chunks],
    }
    if inject:
        task["inject"] = {c.raw_name: inject for c in chunks}
    jobs = []
    for i, job in enumerate(build_jobs(task, 1)):
        job = {k: v for k, v in job.items() if not k.startswith("_")}
        job["jobName"] = f"P09-2016--275678-{first_chunk + i}-2-7"
        jobs.append(complete(job, 0, 1, 0))
    return jobs


def site_file(base: Path, state: Path, port: int, **extra: Any) -> Path:
    import calibdb

    site = {
        "site": {"name": QUEUE, "workdir": str(base / "work"), "min_free_mb": 1},
        "panda": {
            "url": f"https://localhost:{port}",
            "dialect": "v1",
            "x509_proxy": str(state / "pki" / "client-proxy.pem"),
            "ca_dir": str(state / "pki" / "ca.pem"),
            "retries": 3,
            "backoff": 1,
        },
        "grid": {"heartbeat_interval": 5, "max_jobs": 0, "sample_interval": 5, "payload_grace": 5},
        "storage": {"copytool": "local", "input_root": str(base / "castor"), "output_root": str(base / "eos")},
        "calibdb": {
            "backend": "sqlite",
            "snapshot": str(calibdb.demo_snapshot("sqlite", base / "calib")),
            "scratch_dir": str(base / "scratch"),
        },
        **extra,
    }
    path = base / f"site-{len(list(base.glob('site-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def run_pilot(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "compass_pilot.cli", *args], stdout=out, stderr=subprocess.STDOUT, env=env
    )


def table(state: Path, ids: list[int]) -> list[dict[str, Any]]:
    id_list = ",".join(str(i) for i in ids)
    rows = []
    for table_name in ("jobsarchived4", "jobsactive4", "jobsdefined4"):
        for pid, status, code, host, pilot in psql(
            state,
            f"SELECT pandaid, jobstatus, piloterrorcode, modificationhost, pilotid FROM doma_panda.{table_name}"
            f" WHERE pandaid IN ({id_list})",
        ):
            if any(r["job"] == int(pid) for r in rows):
                continue
            # per-file counts as the server stored them: the job report (meta_data) its Adder reads nEvents from
            events: dict[str, Any] = {}
            for (meta,) in psql(
                state,
                f"SELECT metadata FROM doma_panda.metatable WHERE pandaid = {pid}"
                f" UNION ALL SELECT metadata FROM doma_pandaarch.metatable_arch WHERE pandaid = {pid}",
            )[:1]:
                try:
                    for item in json.loads(meta)["files"]["output"]:
                        for sub in item["subFiles"]:
                            events[sub["name"]] = sub.get("nentries")
                except (ValueError, KeyError, TypeError):
                    pass
            rows.append(
                {
                    "job": int(pid),
                    "table": table_name,
                    "state": status,
                    "error": code,
                    "events": " ".join(f"{lfn.split('-')[0][:7]}={n}" for lfn, n in sorted(events.items())) or "-",
                    "pilot": pilot.split("|")[0][-28:],
                    "node": host,
                }
            )
    return sorted(rows, key=lambda r: r["job"])


def check_get_status(base: Path, state: Path, port: int, ids: list[int]) -> None:
    """Our client's bulk job-status call (what the daemon asks before re-sending an owed final)
    against the real server: every id must come back, in one request, with the table's state.

    v1 only: panda-server 1.0.x removed the legacy ``/server/panda/getStatus`` (its
    ``srvcore/allowed_methods.py`` keeps seven UserIF methods, none of the dispatcher's), and
    answers it 403; our legacy dialect is for older servers and our own dispatcher.
    """
    from compass_pilot.config import load_site_config
    from compass_pilot.panda.client import PandaClient

    config = load_site_config(site_file(base, state, port))
    answer = PandaClient(config.panda, config.site).get_status(ids)
    missing = [i for i in ids if i not in answer]
    print(f"get_status (v1, {len(ids)} ids in one request): {answer}  missing: {missing or 'none'}")
    if missing:
        raise SystemExit(f"get_status: the real server did not answer for {missing}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("state", help="STATE dir of setup_db.sh / setup_server.sh")
    parser.add_argument("--port", type=int, default=25443, help="setup_server.sh's HTTPS port")
    parser.add_argument("--db-port", type=int, default=54329, help="setup_db.sh's port")
    parser.add_argument("--scenarios", default="ok,fail,kill,bulk")
    parser.add_argument("--adder-seconds", type=float, default=90)
    args = parser.parse_args()
    state = Path(args.state).resolve()
    DB_PORT[0] = args.db_port
    base = Path(tempfile.mkdtemp(prefix="realserver-"))
    os.chmod(base, 0o755)
    psql(
        state,
        "INSERT INTO doma_panda.schedconfig_json (panda_queue, data, last_update) VALUES"
        f" ('{QUEUE}', '{json.dumps(QUEUE_DATA)}', now()) ON CONFLICT (panda_queue) DO UPDATE SET data = EXCLUDED.data",
    )
    # the resource types a production PanDA defines (the schema ships only 'Undefined'): jobs get SCORE
    psql(
        state,
        "INSERT INTO doma_panda.resource_types (resource_name, mincore, maxcore)"
        " VALUES ('SCORE', 1, 1), ('MCORE', 2, NULL) ON CONFLICT (resource_name) DO NOTHING;"
        " DELETE FROM doma_panda.resource_types WHERE resource_name = 'Undefined'",
    )
    server = Server(state, args.port)
    server.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(base), "RADICAL_BASE": str(base / "radical")}
    scenarios = args.scenarios.split(",")
    ids: dict[str, list[int]] = {}
    try:
        chunk = 20001
        for name in scenarios:
            inject = {"fail": "fatal", "kill": "hang"}.get(name)
            n = 8 if name == "bulk" else 1
            ids[name] = server.submit(our_jobs(base, n, chunk, inject))
            chunk += n
            print(f"{name}: submitted {ids[name]}", flush=True)
            if name == "bulk":
                hpc = {
                    "max_jobs": 8,
                    "max_nodes": 2,
                    "slots_per_node": 4,
                    "fake_nodes": True,
                    "batch_url": "fork://localhost",
                    "poll_interval": 2,
                    "heartbeat_interval": 5,
                    "shared_dir": str(base / "hpc"),
                    "max_submissions": 1,
                }
                cmd = ["daemon", "--site", str(site_file(base, state, args.port, hpc=hpc)), "--once"]
            else:
                cmd = ["grid", "--site-config", str(site_file(base, state, args.port)), "-q", QUEUE, "-v", "1"]
            proc = run_pilot(cmd, env, base / f"{name}.log")
            if name == "kill":
                end = time.time() + 120
                while time.time() < end and proc.poll() is None:
                    status = psql(state, f"SELECT jobstatus FROM doma_panda.jobsactive4 WHERE pandaid = {ids[name][0]}")
                    if status and status[0][0] == "running":
                        print("kill:", server.post("/api/v1/job/kill", {"job_ids": ids[name]}), flush=True)
                        break
                    time.sleep(2)
            rc = proc.wait(600)
            print(f"{name}: pilot exit {rc} (log {base / f'{name}.log'})", flush=True)
        adder = subprocess.Popen(
            [
                "runuser",
                "-u",
                "pandasrv",
                "--",
                str(state / "venv" / "bin" / "python"),
                "-m",
                "pandaserver.daemons.scripts.add_main",
            ],
            env=server_env(state, args.port),
            cwd=str(state),
            stdout=(base / "adder.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the Adder forks workers: end them all, not just runuser
        )
        all_ids = [i for group in ids.values() for i in group]
        end = time.time() + args.adder_seconds
        while time.time() < end:
            archived = psql(
                state, f"SELECT COUNT(*) FROM doma_panda.jobsarchived4 WHERE pandaid IN ({','.join(map(str, all_ids))})"
            )
            if int(archived[0][0]) == len(all_ids):
                break
            time.sleep(3)
        os.killpg(adder.pid, signal.SIGTERM)
        adder.wait(30)
        rows = table(state, all_ids)
        print(f"\n{'scenario':8} {'job':>5} {'table':13} {'state':10} {'error':>5}  per-file nEvents  pilot ID  node")
        for name, group in ids.items():
            for r in (r for r in rows if r["job"] in group):
                print(
                    f"{name:8} {r['job']:>5} {r['table']:13} {r['state']:10} {r['error'] or '-':>5}  {r['events']}"
                    f"  {r['pilot']}  {r['node']}"
                )
        check_get_status(base, state, args.port, all_ids)
        print(f"work dir: {base}")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
