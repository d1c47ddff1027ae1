"""hpc.batch: golden scripts for PBS/Cray, Slurm and local; quoting; bad input.

Golden files live in tests/hpc/golden/; regenerate them (and review the diff) with
``COMPASS_REGEN_GOLDEN=1 python -m pytest tests/hpc/test_batch.py``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from compass_pilot.config import HPCSection
from hpc.batch import format_slurm_time, format_walltime, render_script, safe_job_name
from hpc.packing import Submission, plan_submissions
from tests.hpc.conftest import shell_job

GOLDEN = Path(__file__).parent / "golden"
AGENT = ["/opt/python3/bin/python3", "-m", "hpc.node_agent", "--jobset", "/scratch/compass/sub-1/jobset.json"]


def _sub(n_jobs: int, walltime: int = 3600, slots: int = 32) -> Submission:
    hpc = HPCSection(slots_per_node=slots)
    (sub,) = plan_submissions([shell_job(100 + i, walltime=walltime - 600) for i in range(n_jobs)], hpc)
    return sub


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("COMPASS_REGEN_GOLDEN"):
        path.write_text(text)
    if not path.exists():
        pytest.fail(f"golden file {path} missing: run with COMPASS_REGEN_GOLDEN=1 and review it")
    assert text == path.read_text(), f"{name} differs from the golden file"


CASES = {
    "pbs_aprun.sh": dict(kind="pbs", launcher="aprun", project="bawx", job_name="compass-P09"),
    "pbs_mpiexec.sh": dict(kind="pbs", launcher="mpiexec", job_name="P09-2016"),
    "slurm_srun.sh": dict(kind="slurm", launcher="srun", project="compass", job_name="compass-P09"),
    "local_fake.sh": dict(kind="local", launcher="mpiexec", fake_nodes=True),
    "body_pbs_aprun.sh": dict(kind="pbs", launcher="aprun", body_only=True, job_name="compass-P09"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    text = render_script(_sub(300, 18 * 3600 + 3600), workdir="/scratch/compass/sub-1", agent_cmd=AGENT, **CASES[name])
    _golden(name, text)


def test_key_lines() -> None:
    """The lines a site's batch system acts on, asserted directly (not only via golden files)."""
    sub = _sub(300, 7200)  # 10 nodes, long queue, 2 h
    pbs = render_script(sub, kind="pbs", launcher="aprun", workdir="/w", agent_cmd=AGENT, project="bawx")
    assert "#PBS -l nodes=10:ppn=32:xe\n" in pbs and "#PBS -l walltime=02:00:00\n" in pbs
    assert "#PBS -q long\n" in pbs and "#PBS -A bawx\n" in pbs
    assert pbs.splitlines()[-1].startswith("exec aprun -n 10 -N 1 -d 32 /opt/python3/bin/python3 -m hpc.node_agent")
    slurm = render_script(sub, kind="slurm", launcher="srun", workdir="/w", agent_cmd=AGENT)
    wanted = ("--nodes=10", "--ntasks-per-node=1", "--time=02:00:00", "--partition=long", "--output=/w/batch-%j.log")
    for line in wanted:
        assert f"#SBATCH {line}\n" in slurm
    assert "--account" not in slurm
    assert "exec srun --nodes=10 --ntasks=10 --ntasks-per-node=1" in slurm
    body = render_script(sub, kind="slurm", launcher="srun", workdir="/w", agent_cmd=AGENT, body_only=True)
    assert "#SBATCH" not in body and "#!" not in body and body.splitlines()[-1] == slurm.splitlines()[-1]


def test_hostile_names_cannot_inject(tmp_path: Path) -> None:
    evil = f"x\n#PBS -l nodes=999\n$(touch {tmp_path}/pwned) `touch {tmp_path}/pwned2`; rm -rf /"
    sub = _sub(2)
    agent = ["echo", "it's $(touch " + str(tmp_path) + "/pwned3)", ";", "|"]
    text = render_script(sub, kind="pbs", launcher="mpiexec", workdir=str(tmp_path), agent_cmd=agent, job_name=evil)
    assert "nodes=999" not in "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert [line for line in text.splitlines() if line.startswith("#PBS -N")] == ["#PBS -N x__PBS_-l_nodes"]
    # run the body for real with "mpiexec" replaced by a recorder: nothing gets executed
    body = render_script(
        sub, kind="pbs", launcher="mpiexec", workdir=str(tmp_path), agent_cmd=agent, job_name=evil, body_only=True
    )
    assert f"exec mpiexec -disable-auto-cleanup -n {sub.nodes} -ppn 1 " in body
    launcher_line = f"exec mpiexec -disable-auto-cleanup -n {sub.nodes} -ppn 1 "
    body = body.replace(launcher_line, "exec printf '%s\\n' \"$COMPASS_PILOT_JOB_NAME\" ")
    out = subprocess.run(["bash", "-c", body], capture_output=True, text=True, timeout=10, check=True).stdout
    assert out.splitlines()[0] == evil.replace("\n", "?")
    assert out.splitlines()[-4:] == agent
    assert not list(tmp_path.glob("pwned*"))


def test_bad_input_is_named() -> None:
    sub = _sub(2)
    ok = dict(kind="pbs", launcher="aprun", workdir="/w", agent_cmd=AGENT)
    for override, match in [
        ({"kind": "lsf"}, "kind"),
        ({"launcher": "jsrun"}, "launcher"),
        ({"workdir": "relative/dir"}, "workdir.*absolute"),
        ({"workdir": "/w w"}, "workdir.*whitespace"),
        ({"agent_cmd": []}, "agent_cmd"),
        ({"project": "a b"}, "project"),
        ({"fake_nodes": True}, "fake_nodes"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"env": {"X": "a\nb"}}, "env: value of X"),
        ({"agent_cmd": ["a\nb"]}, "agent_cmd"),
    ]:
        with pytest.raises(ValueError, match=match):
            render_script(sub, **{**ok, **override})
    bad_queue = Submission("long;rm", 1, 32, 60, sub.jobs[:1], sub.placements[:1])
    with pytest.raises(ValueError, match="queue"):
        render_script(bad_queue, **ok)


def test_time_formats_and_names() -> None:
    assert format_walltime(18 * 3600 + 61) == "18:01:01"
    assert format_walltime(30 * 3600) == "30:00:00"
    assert format_slurm_time(30 * 3600 + 5) == "1-06:00:05"
    assert format_slurm_time(59) == "00:00:59"
    with pytest.raises(ValueError, match="walltime"):
        format_walltime(0)
    assert safe_job_name("9lives-and-a-very-long-name", pbs=True) == "c9lives-and-a-v"
    assert shlex.split(f"x {shlex.quote(safe_job_name(''))}") == ["x", "compass"]


def test_local_fake_script_writes_hostfile_with_one_slot_per_node(tmp_path: Path) -> None:
    body = render_script(
        _sub(70),
        kind="local",
        launcher="mpiexec",
        workdir=str(tmp_path),
        agent_cmd=["true"],
        fake_nodes=True,
        body_only=True,
    )
    body = body.replace("exec mpiexec", "exec echo mpiexec")
    out = subprocess.run(["bash", "-c", body], capture_output=True, text=True, timeout=10, check=True).stdout
    assert out.strip() == f"mpiexec -disable-auto-cleanup -launcher fork -f {tmp_path}/hostfile -n 3 true"
    assert (tmp_path / "hostfile").read_text() == "n1:1\nn2:1\nn3:1\n"
