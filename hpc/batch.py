"""Render the batch script of one submission: PBS/Cray, Slurm, or a local mpiexec script.

As in Parsl, the *kind* (which batch system reads the header) and the *launcher* (aprun,
srun, mpiexec: how one node agent per node is started) are separate choices: JINR runs
PBS with mpiexec, Blue Waters ran PBS with aprun, a Slurm site uses srun.  Nothing here
knows about PanDA: a submission is nodes × slots × walltime on a queue, and the
command to start is an opaque argv.

``body_only=True`` gives just the executable part (environment, ``cd``, launcher line):
the radical.saga submitter sets the ``#PBS`` / ``#SBATCH`` resources itself from a job
description, and both paths must start the agents the same way.

Safety: everything that reaches the shell is ``shlex.quote``-d.  Directive lines are not
parsed by the shell but by qsub / sbatch, where quoting does not help, so values put
there are either validated (queue, project, workdir: a clear ``ValueError`` naming the
argument) or sanitised (the job name is cosmetic: anything outside ``[A-Za-z0-9_.-]``
becomes ``_``).
"""

from __future__ import annotations

import re
import shlex

from hpc.packing import Submission

KINDS = ("pbs", "slurm", "local")
LAUNCHERS = ("aprun", "srun", "mpiexec")

_NAME_RE = re.compile(r"^[A-Za-z0-9_.@+-]+$")  # queue / partition / account names
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_JOBNAME_BAD = re.compile(r"[^A-Za-z0-9_.-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def format_walltime(seconds: int) -> str:
    """``HH:MM:SS`` with hours not wrapped at 24 (qsub accepts e.g. ``36:00:00``)."""
    if seconds < 1:
        raise ValueError(f"walltime: expected a positive number of seconds, got {seconds!r}")
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def format_slurm_time(seconds: int) -> str:
    """Slurm's ``D-HH:MM:SS`` (``HH:MM:SS`` under a day)."""
    text = format_walltime(seconds)
    days, rest = divmod(int(seconds), 86400)
    if not days:
        return text
    return f"{days}-{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


def safe_job_name(name: str, *, limit: int = 64, pbs: bool = False) -> str:
    """A job name qsub / sbatch accept and that cannot smuggle a directive or a newline.

    Torque wants ≤15 characters starting with a letter; Slurm is laxer (we cap at 64).
    """
    clean = _JOBNAME_BAD.sub("_", name) or "compass"
    if pbs:
        if not clean[0].isalpha():
            clean = "c" + clean
        limit = 15
    return clean[:limit]


def _check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"{what}: {value!r} is not a valid batch name (allowed: letters, digits, _ . @ + -)")
    return value


def _check_workdir(workdir: str) -> str:
    if not workdir.startswith("/"):
        raise ValueError(f"workdir: {workdir!r} must be an absolute path (batch jobs start in another directory)")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in workdir) or "%" in workdir:
        raise ValueError(f"workdir: {workdir!r} contains whitespace, a control character or '%'")
    return workdir.rstrip("/") or "/"


def _launcher_line(sub: Submission, launcher: str, agent_cmd: list[str], hostfile: str | None) -> str:
    argv = " ".join(shlex.quote(a) for a in agent_cmd)
    n = sub.nodes
    if launcher == "aprun":
        # one agent per node (-N 1), each owning all the node's cores (-d) for its payloads
        return f"exec aprun -n {n} -N 1 -d {sub.slots_per_node} {argv}"
    if launcher == "srun":
        return f"exec srun --nodes={n} --ntasks={n} --ntasks-per-node=1 --cpus-per-task={sub.slots_per_node} {argv}"
    # -disable-auto-cleanup: hydra must not take every node down when one node agent dies;
    # the Blue Waters pilot lost all 512 jobs of a submission to one failure.
    if hostfile is not None:
        return f"exec mpiexec -disable-auto-cleanup -launcher fork -f {shlex.quote(hostfile)} -n {n} {argv}"
    return f"exec mpiexec -disable-auto-cleanup -n {n} -ppn 1 {argv}"


def render_script(
    sub: Submission,
    *,
    launcher: str,
    kind: str,
    workdir: str,
    agent_cmd: list[str],
    project: str = "",
    job_name: str = "",
    body_only: bool = False,
    fake_nodes: bool = False,
    env: dict[str, str] | None = None,
) -> str:
    """The batch script (or just its body) starting one node agent per node of ``sub``.

    ``fake_nodes`` (mpiexec only): one host plays ``sub.nodes`` nodes; the script writes
    a hostfile of made-up names ``n1 … nN`` (one slot each) and uses hydra's fork
    launcher, which gives each rank its own "host".  ``env``: extra variables exported
    before the launcher.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher: expected one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if fake_nodes and launcher != "mpiexec":
        raise ValueError(f"fake_nodes: only the mpiexec launcher can fake nodes, not {launcher!r}")
    if not agent_cmd or not all(isinstance(a, str) for a in agent_cmd):
        raise ValueError("agent_cmd: expected a non-empty list of strings")
    if sub.nodes < 1 or sub.slots_per_node < 1:
        raise ValueError(f"submission: needs at least one node and slot, got {sub.nodes} × {sub.slots_per_node}")
    if any(_CONTROL.search(a) for a in agent_cmd):
        raise ValueError("agent_cmd: an argument contains a newline or control character")
    workdir = _check_workdir(workdir)
    if project:
        _check_name(project, "project")
    if kind != "local":
        _check_name(sub.queue, "queue")
    for key, value in (env or {}).items():
        if not _ENV_RE.match(key):
            raise ValueError(f"env: {key!r} is not a valid variable name")
        if _CONTROL.search(value):
            raise ValueError(f"env: value of {key} contains a newline or control character")

    lines: list[str] = []
    if not body_only:
        lines.append("#!/bin/bash")
        if kind == "pbs":
            # Cray XE nodes (Blue Waters) are asked for by feature; other PBS sites by ppn
            feature = ":xe" if launcher == "aprun" else ""
            lines += [
                f"#PBS -N {safe_job_name(job_name or 'compass', pbs=True)}",
                f"#PBS -l nodes={sub.nodes}:ppn={sub.slots_per_node}{feature}",
                f"#PBS -l walltime={format_walltime(sub.walltime)}",
                f"#PBS -q {sub.queue}",
            ]
            if project:
                lines.append(f"#PBS -A {project}")
            lines += ["#PBS -j oe", f"#PBS -o {workdir}/batch.log"]
        elif kind == "slurm":
            lines += [
                f"#SBATCH --job-name={safe_job_name(job_name or 'compass')}",
                f"#SBATCH --nodes={sub.nodes}",
                "#SBATCH --ntasks-per-node=1",
                f"#SBATCH --cpus-per-task={sub.slots_per_node}",
                f"#SBATCH --time={format_slurm_time(sub.walltime)}",
                f"#SBATCH --partition={sub.queue}",
            ]
            if project:
                lines.append(f"#SBATCH --account={project}")
            lines.append(f"#SBATCH --output={workdir}/batch-%j.log")
        else:
            lines.append(f"# local run: {sub.nodes} node agent(s), {sub.slots_per_node} slots each")
        lines.append("")
    lines.append(f"cd {shlex.quote(workdir)} || exit 1")
    lines.append("export PYTHONUNBUFFERED=1")
    if job_name:
        # no control characters: a quoted newline would start a line that reads like a directive
        lines.append(f"export COMPASS_PILOT_JOB_NAME={shlex.quote(_CONTROL.sub('?', job_name))}")
    for key in sorted(env or {}):
        lines.append(f"export {key}={shlex.quote((env or {})[key])}")
    hostfile = None
    if fake_nodes:
        hostfile = f"{workdir}/hostfile"
        hosts = " ".join(f"n{i}:1" for i in range(1, sub.nodes + 1))
        lines.append(f"printf '%s\\n' {hosts} > {shlex.quote(hostfile)}")
    lines.append(_launcher_line(sub, launcher, agent_cmd, hostfile))
    return "\n".join(lines) + "\n"
