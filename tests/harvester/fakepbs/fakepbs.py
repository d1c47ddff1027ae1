#!/usr/bin/env python3
"""Fake PBS Pro commands (qsub, qstat, qdel, pbsnodes) for tests: PBS cannot run on this box.

They replay the output formats radical.saga's pbspro adaptor parses (see
radical/saga/adaptors/pbspro/pbsprojob.py): ``qstat --version`` → ``pbs_version = …``;
``pbsnodes -a`` → ``pcpus = N`` lines; ``qsub FILE`` → ``<seq>.<server>``;
``qstat -fx ID`` → ``Job Id:`` block with ``job_state`` (Q/R/F), ``Job_Name``,
``exit_status``, ``ctime``, ``stime``; unknown id → ``qstat: Unknown Job Id <id>`` on
stderr and exit 153; ``qdel ID`` kills the job's process group (exit_status 271).
A submitted script really runs (in the background, under bash) so states move on.
State lives in $FAKEPBS_DIR.  A file ``$FAKEPBS_DIR/reject_queue`` holding a queue name
makes qsub refuse that queue as PBS does: ``qsub: Unknown queue`` and exit 170 (a file,
because radical.saga's shell keeps the environment it was started with).  ``qstat -Q``
lists one queue (the daemon's preflight probe); a file ``$FAKEPBS_DIR/server_down`` makes
every command fail as a PBS client does when its server is down (exit 111).
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKEPBS_DIR", "/tmp/fakepbs"))
SERVER = "fakepbs"


def _job_dir(job_id: str) -> Path:
    return STATE / job_id.split(".")[0]


def qsub(args):
    script = Path(args[-1]).read_text()
    queue = re.search(r"^#PBS -q (\S+)", script, re.M)
    reject = STATE / "reject_queue"
    if queue and reject.exists() and queue.group(1) == reject.read_text().strip():
        print("qsub: Unknown queue", file=sys.stderr)
        return 170
    STATE.mkdir(parents=True, exist_ok=True)
    seq = len([p for p in STATE.iterdir() if p.is_dir()]) + 1
    d = STATE / str(seq)
    d.mkdir()
    (d / "script").write_text(script)
    out = re.search(r"^#PBS -o (\S+)", script, re.M)
    err = re.search(r"^#PBS -e (\S+)", script, re.M)
    name = re.search(r"^#PBS -N (\S+)", script, re.M)
    (d / "name").write_text(name.group(1) if name else "STDIN")
    (d / "ctime").write_text(time.strftime("%a %b %d %H:%M:%S %Y"))
    runner = (
        f"sleep 1; date '+%a %b %d %H:%M:%S %Y' > {d}/stime; "
        f"bash {d}/script > {out.group(1) if out else d / 'out'} 2> {err.group(1) if err else d / 'err'}; "
        f"echo $? > {d}/exit_status"
    )
    proc = subprocess.Popen(
        ["bash", "-c", runner],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (d / "pid").write_text(str(proc.pid))
    print(f"{seq}.{SERVER}")
    return 0


def qstat(args):
    if "--version" in args:
        print("pbs_version = 19.1.3")
        return 0
    if args[:1] == ["-Q"]:
        print("Queue              Max   Tot Ena Str   Que   Run   Hld   Wat   Trn   Ext Type")
        print("---------------- ----- ----- --- --- ----- ----- ----- ----- ----- ----- ----")
        print("workq                0     0 yes yes     0     0     0     0     0     0 Exec")
        return 0
    job_id = args[-1]
    d = _job_dir(job_id)
    if not d.is_dir():
        print(f"qstat: Unknown Job Id {job_id}", file=sys.stderr)
        return 153
    if (d / "exit_status").exists():
        state, code = "F", (d / "exit_status").read_text().strip()
    elif (d / "stime").exists():
        state, code = "R", None
    else:
        state, code = "Q", None
    print(f"Job Id: {d.name}.{SERVER}")
    print(f"    Job_Name = {(d / 'name').read_text()}")
    print(f"    job_state = {state}")
    print(f"    ctime = {(d / 'ctime').read_text()}")
    if (d / "stime").exists():
        print(f"    stime = {(d / 'stime').read_text().strip()}")
    if state == "R":
        print("    exec_host = nid00001/0*32+nid00002/0*32")
    if code is not None:
        print(f"    Exit_status = {code}")
    return 0


def qdel(args):
    d = _job_dir(args[-1])
    if not d.is_dir():
        print(f"qdel: Unknown Job Id {args[-1]}", file=sys.stderr)
        return 153
    try:
        os.killpg(int((d / "pid").read_text()), signal.SIGTERM)
    except (ProcessLookupError, ValueError, FileNotFoundError):
        pass
    (d / "exit_status").write_text("271\n")
    return 0


def pbsnodes(args):
    for n in (1, 2):
        print(
            f"nid0000{n}\n     Mom = nid0000{n}\n     state = free\n     pcpus = 32\n"
            f"     resources_available.ncpus = 32\n"
        )
    return 0


if __name__ == "__main__":
    tool = Path(sys.argv[1]).name
    if (STATE / "server_down").exists():
        print(f"Connection refused\n{tool}: cannot connect to server {SERVER} (errno=111)", file=sys.stderr)
        sys.exit(111)
    sys.exit({"qsub": qsub, "qstat": qstat, "qdel": qdel, "pbsnodes": pbsnodes}[tool](sys.argv[2:]))
