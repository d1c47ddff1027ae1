"""What a node agent imports before its payloads start: nothing it does not need there.

Sixteen agents start at once per submission (on the e2e box, two cores), and each pays
for every module it imports.  These modules were taken off the agent's start-up path
(imported where a rare path or a later step uses them); a module-level import that brings
one back fails here.  Times belong in ``benchmarks/node_agent.py``, not in a test.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hpc.launch import import_path

#: Imported by the agent only once its payloads run (notices, results), on rare paths
#: (grid mode, MariaDB, URL transformations, the daemon's readers) or never.
NOT_AT_START = (
    "socket",  # hpc.notify's sender: made by the first notice
    "hashlib",  # notices' HMAC (OpenSSL's libcrypto)
    "_hashlib",
    "hmac",
    "subprocess",  # grid mode's Popen start; the agent posix_spawns
    "datetime",  # reading PanDA times (the daemon)
    "tarfile",  # log tarballs after a payload ended; MariaDB snapshots
    "secrets",
    "tempfile",
    "sqlite3",
    "concurrent.futures",  # the result writers: once a payload has ended
    "compass_pilot.config",  # the whole site file: compass_pilot.sections is the agent's part
    "compass_pilot.logpack",
    "calibdb.node",  # the calibration DB: only when a job set has one
    "calibdb.backends",
    "urllib.request",
    "psutil",
    "yaml",
    "mpi4py",
)


def _modules_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules a fresh ``python -S -E`` (the agent's launch line) holds after ``code``."""
    bootstrap = (
        f"import sys;sys.path[:0]=sys.argv.pop(1).split({os.pathsep!r});"
        + code
        + ";sys.stdout.write('\\n'.join(sorted(k for k, v in sys.modules.items() if v is not None)))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-E", "-c", bootstrap, os.pathsep.join(import_path())],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    return set(out.stdout.split())


def test_importing_the_agent_loads_none_of_the_heavy_modules() -> None:
    loaded = _modules_after("import hpc.node_agent")
    assert "hpc.node_agent" in loaded and "compass_pilot.sections" in loaded
    assert sorted(loaded & set(NOT_AT_START)) == []


def test_parsing_the_command_line_loads_none_of_them_either(tmp_path: os.PathLike[str]) -> None:
    # rank from the launcher's environment (no MPI), no keeper (no fork in a test): main()
    # parses its arguments and fails on the missing job set with the usage exit code
    env = dict(os.environ, PMI_RANK="0", PMI_SIZE="1", COMPASS_AGENT_KEEPER="off")
    missing = os.path.join(tmp_path, "no-such-jobset.json")
    loaded = _modules_after(
        f"from hpc.node_agent import main;rc=main(['--jobset',{missing!r},'--fake-nodes']);assert rc==2,rc", env
    )
    assert "argparse" in loaded
    assert sorted(loaded & set(NOT_AT_START)) == []


@pytest.mark.parametrize(
    "module",
    [
        "compass_pilot.sections",
        "compass_pilot.config",
        "compass_pilot.payload",
        "harvester_plugins.jobfiles",
        "hpc.notify",
        "calibdb.backends",
        "calibdb.snapshot",
        "hpc.node_agent",
    ],
)
def test_each_module_imports_alone(module: str) -> None:
    """The deferred imports must not have left a module needing another one imported first."""
    assert module in _modules_after(f"import {module}")
