"""Fixtures for the Harvester plugin tests: a private radical.saga home, a real Slurm, fake PBS.

radical.saga writes ~/.radical and ~/.bash_history and its shells inherit the process
environment, so HOME / RADICAL_BASE / PATH / SLURM_CONF are set in ``os.environ``
(restored at the end) before any job service is created.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harvester_plugins import saga_backend
from tests.slurm_cluster import SlurmCluster

FAKEPBS = Path(__file__).parent / "fakepbs"


@pytest.fixture(scope="session", autouse=True)
def saga_home() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="saga-home-"))
    saved = {k: os.environ.get(k) for k in ("HOME", "RADICAL_BASE")}
    os.environ.update(saga_backend.saga_env_for_tests(str(base)))
    yield base
    saga_backend.close_services()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """A real 2-node × 32-CPU Slurm in its own network namespace; FAILS if Slurm is missing."""
    saved = {k: os.environ.get(k) for k in ("PATH", "SLURM_CONF")}
    with SlurmCluster(nodes=2, cpus=32, partitions=("long", "medium", "short")) as cluster:
        os.environ.update(cluster.env)
        yield cluster
        saga_backend.drop_service("slurm://localhost")
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def fakepbs() -> Iterator[Path]:
    """Fake qsub/qstat/qdel/pbsnodes first on PATH (PBS cannot run here), with a fresh state dir."""
    state = Path(tempfile.mkdtemp(prefix="fakepbs-"))
    saved = {k: os.environ.get(k) for k in ("PATH", "FAKEPBS_DIR")}
    os.environ["PATH"] = f"{FAKEPBS}:{os.environ['PATH']}"
    os.environ["FAKEPBS_DIR"] = str(state)
    yield state
    saga_backend.drop_service("pbspro://localhost")
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(state, ignore_errors=True)
