"""One node agent alone: what it costs to start 32 payloads, wait for them and write their outcomes.

``e2e.py`` measures the whole system (daemon, 16 agents, 512 payloads); this isolates ONE
agent (one fake node, the launcher's rank in its environment as under hydra's mpiexec),
so a change to the agent can be judged without the daemon's noise:

    python benchmarks/node_agent.py [--slots 32] [--sleep 5] [--runs 3] [--reco] [--daemon]

Per run it prints: *→all started* (agent start → the last ``<reports>/<PandaID>.started``
marker), *end→outcome* p50 / max (the payload's own last act — it writes the time — →
the mtime of its ``worker_attributes.json``), *tree CPU* (user + system of the agent's
whole process tree: keeper, agent, payloads; exact, from ``RUSAGE_CHILDREN``),
*pre-fork* (the keeper's CPU: interpreter + imports, read from ``/proc`` once all have
started), *post-fork* (the agent's own CPU up to then: job set, calibration DB, the
launches), *agent* (the agent's own CPU over its whole run, last seen before it exited:
launches and outcomes), and the agent's peak thread count.  Payload = ``sh -c 'sleep N; date; echo End
of Job'`` through the real COMPASS plug-in (~2.4 ms CPU each on this box).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from compass_pilot.config import HPCSection, SiteConfig, config_to_dict
from compass_pilot.job import JobSpec
from hpc.jobset import write_jobset
from hpc.launch import agent_command
from hpc.packing import plan_submissions
from tests.hpc.conftest import shell_job_dict  # the tests' shell payload, one definition

_TICK = os.sysconf("SC_CLK_TCK")


def _job(panda_id: int, script: str, reco: bool = False) -> JobSpec:
    data = shell_job_dict(panda_id, script)
    if reco:  # e2e's shape: three outputs to checksum and a log tarball to pack per job
        outs = [f"mDST-{panda_id}.root", f"histsum-{panda_id}.root", f"evtdump-{panda_id}.raw", f"{panda_id}.log.tgz"]
        data.update({key: ",".join(["x"] * 4) for key in ("destinationDblock", "realDatasets", "fileDestinationSE")})
        data.update(outFiles=",".join(outs), logFile=outs[-1], ddmEndPointOut=",".join(["x"] * 4))
    return JobSpec.from_panda(data)


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _agent_of(keeper: int) -> int | None:
    """The keeper's child that runs the agent (the payloads are the agent's children)."""
    try:
        kids = [int(k) for k in Path(f"/proc/{keeper}/task/{keeper}/children").read_text().split()]
    except OSError:
        return None
    for kid in kids:
        try:
            if b"hpc.node_agent" in Path(f"/proc/{kid}/cmdline").read_bytes():
                return kid
        except OSError:
            continue
    return None


def one_run(slots: int, sleep: float, reco: bool = False, daemon: bool = False) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    try:
        ids = range(1000, 1000 + slots)
        touch = ': >"$TMPMDSTFILE"; : >"$TMPHISTFILE"; : >"$EVTDUMPFILE"; ' if reco else ""
        jobs = [_job(i, f"sleep {sleep}; {touch}date +%s.%N > ended; echo End of Job", reco) for i in ids]
        (sub,) = plan_submissions(jobs, HPCSection(max_jobs=slots, max_nodes=1, slots_per_node=slots))
        site = SiteConfig()
        site.payload.commands = ["sh"]
        site.calibdb.scratch_dir = str(tmp / "scratch")
        workdirs = {i: str(tmp / f"PandaJob_{i}_1") for i in ids}
        # --daemon: the job set as the MOM-node daemon writes it (outcomes neither fsync'd nor in three files)
        shape = {"durable_outcomes": False, "lean_outcomes": True} if daemon else {}
        jobset = write_jobset(tmp / "jobset.json", sub, config_to_dict(site), workdirs, str(tmp), **shape)
        reports = tmp / "reports"
        env = dict(os.environ, PMI_RANK="0", PMI_SIZE="1")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            agent_command(str(jobset), fake_nodes=True),  # as the daemon starts it
            env=env,
            stderr=subprocess.DEVNULL,
        )
        started = pre = post = float("nan")
        threads = 0
        whole = 0.0  # the agent's own CPU, last seen before it exited
        while proc.poll() is None:  # a benchmark may sample; the product never polls
            found = _agent_of(proc.pid)
            agent = found or proc.pid
            try:
                threads = max(threads, len(os.listdir(f"/proc/{agent}/task")))
                if found:  # not the keeper's once the agent is gone
                    whole = _cpu(found)
                names = os.listdir(reports) if started != started and reports.is_dir() else []
                if sum(1 for n in names if n.endswith(".started")) == slots:
                    started = time.monotonic() - t0
                    post = _cpu(agent)
                    pre = _cpu(proc.pid) if agent != proc.pid else 0.0
            except OSError:
                pass
            time.sleep(0.005)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        lat = sorted(
            (Path(d) / "worker_attributes.json").stat().st_mtime - float((Path(d) / "ended").read_text())
            for d in workdirs.values()
        )
        return {
            "rc": proc.returncode,
            "started": started,
            "end_p50": statistics.median(lat) * 1e3,
            "end_max": lat[-1] * 1e3,
            "tree": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
            "pre": pre,
            "post": post,
            "whole": whole,
            "threads": threads,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--sleep", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reco", action="store_true", help="e2e's job shape: three outputs and a log tarball each")
    parser.add_argument(
        "--daemon", action="store_true", help="the daemon's job set: outcomes not fsync'd, one file per job (lean)"
    )
    args = parser.parse_args()
    print(f"one node agent, {args.slots} x sleep {args.sleep:g} (fake node; box load {os.getloadavg()[0]:.1f})")
    print("run  rc  →all started  end→outcome p50/max  tree CPU  pre-fork  post-fork  agent  threads")
    for n in range(args.runs):
        r = one_run(args.slots, args.sleep, args.reco, args.daemon)
        print(
            f"{n + 1:3d} {r['rc']:3d} {r['started']:10.3f} s {r['end_p50']:8.0f} /{r['end_max']:5.0f} ms"
            f" {r['tree']:8.3f} s {r['pre']:7.2f} s {r['post']:8.2f} s {r['whole']:5.2f} s {r['threads']:7d}"
        )


if __name__ == "__main__":
    main()
