#!/usr/bin/env python3
"""Run a real, unmodified PanDA pilot3 against our embedded dispatcher: success, payload failure, server kill.

Usage::

    scripts/run_pilot3.py --pilot-src DIR [--scenarios ok,fail,kill] [--json OUT]
    scripts/run_pilot3.py --pypi 3.7.0.36          # pip-downloads the panda-pilot sdist first

``DIR`` is a pilot3 source tree (the PyPI sdist unpacked, or a PanDAWMS/pilot3 checkout);
it is copied into a temp dir, never changed in place.  Why each piece is here:

- pilot3's orphan killer signals every same-uid process whose parent is 1, so the whole
  run happens in its own PID namespace (``unshare --pid --fork --mount-proc``, the script
  re-executes itself there) *and* with ``PILOT_NOKILL=1``;
- pilot3 takes its queue description and DDM endpoints from ``QUEUEDATA_SERVER_URL`` /
  ``STORAGEDATA_SERVER_URL`` (a local HTTP server answers them) and its "full" queue
  description from the file ``LOCAL_AGIS_SCHEDCONF`` names: a minimal queue, no CRIC/CVMFS;
- pilot3 (user ``generic``) downloads the job's transformation with curl, and only from
  its own whitelist of base URLs.  We name the transformation under one of them and point
  curl at a local HTTP server through ``http_proxy`` (``no_proxy`` keeps the pilot's own
  calls to the dispatcher direct), so the pilot code runs unchanged;
- pilot3 ≥ 3.10 loads ``X509_USER_PROXY`` even for plain HTTP: a throw-away self-signed
  cert stands in for it;
- pilot3 heartbeats every 1800 s; only the temp copy's ``default.cfg`` is set to 5 s so a
  server kill arrives within the test's time.

Prints one line per scenario: job × final state × error code × pilot exit code × updates
seen × request kinds, and (``--json``) the same as JSON for the test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compass_pilot.panda.dispatcher import Dispatcher  # noqa: E402
from compass_pilot.panda.store import _Tx, insert_jobs  # noqa: E402

PIP_SDIST = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
NS_FLAG = "COMPASS_PILOT3_IN_NS"
TRF_BASE = "http://pandaserver-doma.cern.ch:25080/trf/user"  # on pilot3's generic whitelist
QUEUE, SITE = "COMPASS_TEST", "COMPASS_TEST"
#: the payload: its arguments say what to do (exit code, seconds to sleep)
PAYLOAD = b"""#!/bin/sh
echo "compass test payload: $*"
case "$1" in
  ok) echo "End of Job"; exit 0 ;;
  fail) echo "A FATAL ERROR APPEARED" >&2; exit "${2:-7}" ;;
  sleep) sleep "${2:-600}"; exit 0 ;;
esac
exit 9
"""
SCENARIOS = {
    # name: (jobPars, expected final state, expected pilot error code)
    "ok": ("ok", "finished", None),
    "fail": ("fail 7", "failed", 1305),  # not 2 or 3: pilot3 >= 3.10 maps those to 1367 / 1368
    "kill": ("sleep 600", "failed", 1144),
}


class _InfoHandler(BaseHTTPRequestHandler):
    """The information system for the pilot: queue data, DDM endpoints, and the transformation.

    ``/cache/schedconfig/<queue>.all.json`` (``QUEUEDATA_SERVER_URL``) and ``/ddmendpoints.json``
    (``STORAGEDATA_SERVER_URL``) are the pilot's documented overrides; anything else is
    curl's proxied GET of ``…/trf/user/<name>`` and gets the test payload.
    """

    def do_GET(self) -> None:
        if "/schedconfig/" in self.path:
            body = json.dumps(queuedata()).encode()
        elif self.path.endswith("ddmendpoints.json"):
            body = b"{}"
        else:
            body = PAYLOAD
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def queuedata() -> dict[str, Any]:
    """The smallest queue description pilot3 (user generic) runs a job with."""
    return {
        "name": QUEUE,
        "nickname": QUEUE,
        "resource": QUEUE,
        "site": SITE,
        "atlas_site": SITE,
        "type": "production",
        "state": "ACTIVE",
        "status": "online",
        "corecount": 1,
        "maxrss": 0,
        "maxtime": 0,
        "maxwdir": 100000,
        "timefloor": 0,
        "pledgedcpu": 0,
        "copytools": {},
        "acopytools": {},
        "astorages": {},
        "aprotocols": {},
        "params": {},
        "catchall": "",
        "container_type": "",
        "container_options": "",
        "is_cvmfs": False,
        "pilot_manager": "",
        "direct_access_lan": False,
        "direct_access_wan": False,
    }


def make_test_proxy(home: Path) -> str:
    """A throw-away self-signed cert + key in one PEM, where pilot3 looks for its X509 proxy.

    pilot3 ≥ 3.10 loads the proxy as its client certificate before every server call,
    even over plain HTTP (where it is never sent); without a file it raises and gets no job.
    """
    key, cert, proxy = home / "key.pem", home / "cert.pem", home / "x509up"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=pilot3-test",
            "-days",
            "1",
        ],
        check=True,
        capture_output=True,
    )
    proxy.write_bytes(cert.read_bytes() + key.read_bytes())
    proxy.chmod(0o600)
    return str(proxy)


def job_spec(pars: str, n: int) -> dict[str, Any]:
    return {
        "taskID": 1,
        "jobsetID": 1,
        "jobName": f"pilot3-test-{n}",
        "transformation": f"{TRF_BASE}/compass-test-payload.sh",
        "jobPars": pars,
        "prodSourceLabel": "managed",
        "processingType": "test",
        "swRelease": "NULL",
        "inFiles": "",
        "outFiles": "",
        "logFile": "",
        "maxCpuCount": 600,
        "maxWalltime": 600,
        "coreCount": 1,
        "minRamCount": 0,
        "maxDiskCount": 0,
        "currentPriority": 1000,
        "destinationSE": "NULL",
        "cmtConfig": "",
    }


def prepare_pilot(src: Path, into: Path) -> Path:
    """A private copy of the pilot with a 5 s heartbeat (the only change)."""
    dest = into / "pilot3"
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".git"))
    cfg = dest / "pilot" / "util" / "default.cfg"
    text = cfg.read_text()
    text = re.sub(r"(?m)^heartbeat:\s*\d+", "heartbeat: 5", text)
    text = re.sub(r"(?m)^debug_heartbeat:\s*\d+", "debug_heartbeat: 5", text)
    cfg.write_text(text)
    return dest


def pypi_sdist(version: str, into: Path) -> Path:
    """pip download the panda-pilot sdist and unpack it (the PyPI project is ``panda-pilot``)."""
    subprocess.run(
        [*PIP_SDIST, f"panda-pilot=={version}", "-d", str(into)],
        check=True,
    )
    (archive,) = into.glob("panda-pilot-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / f"panda-pilot-{version}"


def run_scenario(name: str, pilot: Path, base: Path, timeout: float) -> dict[str, Any]:
    pars, want_state, want_code = SCENARIOS[name]
    work = base / name
    home = work / "home"
    home.mkdir(parents=True)
    (home / "schedconf.json").write_text(json.dumps({QUEUE: queuedata()}))  # the "full" queue description
    db = str(work / "panda.sqlite")
    dispatcher = Dispatcher(db, host="127.0.0.1", port=0, check_interval=3600, retry_delay=3600).start()
    trf = ThreadingHTTPServer(("127.0.0.1", 0), _InfoHandler)
    threading.Thread(target=trf.serve_forever, daemon=True).start()
    try:
        with _Tx(dispatcher.store.conn) as conn:
            (panda_id,) = insert_jobs(conn, [job_spec(pars, 1)], max_attempts=1)
        port = dispatcher.url.rsplit(":", 1)[1]
        env = {
            **os.environ,
            "PILOT_NOKILL": "1",
            "PANDA_BASE_URLS": TRF_BASE,  # pilot3 ≥ 3.10's whitelist override (3.7 has TRF_BASE built in)
            "PILOT_HOME": str(home),
            "http_proxy": f"http://127.0.0.1:{trf.server_address[1]}",
            "QUEUEDATA_SERVER_URL": f"http://127.0.0.1:{trf.server_address[1]}/cache/schedconfig/{{pandaqueue}}.all.json",
            "LOCAL_AGIS_SCHEDCONF": str(home / "schedconf.json"),
            "STORAGEDATA_SERVER_URL": f"http://127.0.0.1:{trf.server_address[1]}/ddmendpoints.json",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONPATH": str(pilot),
            "HOME": str(home),
        }
        env["X509_USER_PROXY"] = make_test_proxy(home)
        cmd = [
            sys.executable,
            str(pilot / "pilot.py"),
            "-q", QUEUE, "-r", QUEUE, "-s", SITE, "-w", "generic", "--pilot-user", "generic",
            "-j", "managed", "-i", "PR", "-d", "-t", "-v", "1",
            "--url", "http://127.0.0.1", "-p", port, "-a", str(work),
        ]  # fmt: skip
        log = (work / "pilot.out").open("wb")
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        killed = False
        while proc.poll() is None and time.time() - start < timeout:
            if name == "kill" and not killed and dispatcher.job(panda_id).get("status") == "running":
                killed = dispatcher.kill_job(panda_id)
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        row = dispatcher.job(panda_id)
        updates = dispatcher.updates(panda_id)
        result = {
            "scenario": name,
            "panda_id": panda_id,
            "state": row["status"],
            "error_code": row["error_code"],
            "pilot_rc": proc.returncode,
            "seconds": round(time.time() - start, 1),
            "states_sent": [u["state"] for u in updates],
            "pilot_id": row["pilot_id"],
            "node": row["node"],
            "requests": dict(dispatcher.store.request_counts),
            "ok": row["status"] == want_state and row["error_code"] == want_code,
            "log": str(work / "pilot.out"),
        }
    finally:
        trf.shutdown()
        dispatcher.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pilot-src", help="a pilot3 source tree (PyPI sdist unpacked or a git checkout)")
    source.add_argument("--pypi", metavar="VERSION", help="pip download panda-pilot==VERSION (sdist) and use it")
    parser.add_argument("--scenarios", default="ok,fail,kill")
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per pilot run")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (pilot logs)")
    args = parser.parse_args(argv)
    if os.environ.get(NS_FLAG) != "1":
        # a PID namespace of our own: pilot3's orphan killer must not reach the caller's processes
        env = {**os.environ, NS_FLAG: "1"}
        cmd = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(Path(__file__).resolve())]
        return subprocess.call([*cmd, *(argv if argv is not None else sys.argv[1:])], env=env)
    base = Path(tempfile.mkdtemp(prefix="pilot3-run-"))
    try:
        src = Path(args.pilot_src).resolve() if args.pilot_src else pypi_sdist(args.pypi, base / "sdist")
        pilot = prepare_pilot(src, base)
        version = (pilot / "PILOTVERSION").read_text().strip() if (pilot / "PILOTVERSION").exists() else "?"
        names = args.scenarios.split(",")
        with ThreadPoolExecutor(len(names)) as pool:  # one dispatcher and one pilot per scenario, side by side
            results = list(pool.map(lambda name: run_scenario(name, pilot, base, args.timeout), names))
        print(f"pilot3 {version} from {src}")
        print(f"{'scenario':9} {'job':>4} {'state':9} {'error':>5} {'rc':>3} {'secs':>5}  states sent · requests")
        for r in results:
            print(
                f"{r['scenario']:9} {r['panda_id']:>4} {r['state']:9} {r['error_code'] or '-':>5} {r['pilot_rc']:>3}"
                f" {r['seconds']:>5}  {' '.join(r['states_sent'])} · {r['requests']} {'OK' if r['ok'] else 'WRONG'}"
            )
        if args.json:
            Path(args.json).write_text(json.dumps({"version": version, "results": results}, indent=1))
        return 0 if all(r["ok"] for r in results) else 1
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"work dir kept: {base}")


if __name__ == "__main__":
    sys.exit(main())
