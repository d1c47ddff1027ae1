"""Fixtures for the HPC tests: job dicts, the real mpiexec, a jobs root in a temp dir."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from compass_pilot.job import JobSpec


def shell_job_dict(
    panda_id: int, script: str, *, job_type: str = "reco", priority: int = 2000, walltime: int = 0
) -> dict[str, Any]:
    """A PanDA job dict whose payload is a plain shell command (a ProdSys-style transformation).

    The COMPASS plug-in runs ``transformation jobPars`` with bash, so ``sh -c SCRIPT``
    is a real payload through the real experiment code.
    """
    import shlex

    return {
        "PandaID": panda_id,
        "attemptNr": 1,
        "jobName": f"P09-2016--275678-{panda_id}-2-7-{panda_id}-1",
        "transformation": "sh",
        "jobPars": f"-c {shlex.quote(script)}",
        "prodSourceLabel": "managed",
        "processingType": job_type,
        "currentPriority": priority,
        "maxWalltime": walltime,
        "coreCount": 1,
    }


def shell_job(panda_id: int, script: str = "echo End of Job", **kw: Any) -> JobSpec:
    return JobSpec.from_panda(shell_job_dict(panda_id, script, **kw))


@pytest.fixture(scope="session")
def mpiexec() -> str:
    """The real hydra mpiexec of the mpich wheel; FAILS (not skips) when it is missing."""
    found = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if not found:
        pytest.fail("mpiexec not found: install the MPI test deps (pip install mpi4py mpich)")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.fail("mpi4py is not installed: pip install mpi4py mpich")
    return found
