"""How a node agent's interpreter is started: lean, with the submitting process's import path.

A batch job starts one agent per node, all at once (16 fake nodes share this box).  A
plain ``python -m hpc.node_agent`` pays, per agent, for ``site`` (every ``.pth`` file of
the install: an editable install's finder, setuptools' distutils hook, whatever else the
environment added — ~35 ms of CPU here) and obeys the submitting environment's
``PYTHON*`` variables, ``PYTHONDONTWRITEBYTECODE`` included: then every agent compiles
every module it imports from source again (~35 ms more).  So, when the agent runs the
same interpreter as the process that submits (the daemon's batch broker, Harvester's
submitter), it is started as::

    python -S -E -c '<bootstrap>' <import path> --jobset JOBSET [--fake-nodes]

``-S``: no ``site``; ``-E``: no ``PYTHON*`` variables (bytecode is cached as Python
normally does).  The import path is the submitter's own, this package's root first,
passed explicitly: third-party packages (mpi4py under aprun, psutil) resolve from the
same directories, but ``.pth`` hooks do not run in the agent.  Another interpreter
(``python`` set in Harvester's plugin section: the compute nodes' own) gets the plain
``-m`` form and its own site.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: Run by ``python -c``: argv[1] is the import path; the rest is the node agent's command line.
#: It names the module, so ``ps`` and the tools that look for ``hpc.node_agent`` still find it.
BOOTSTRAP = (
    f"import sys;sys.path[:0]=sys.argv.pop(1).split({os.pathsep!r});from hpc.node_agent import main;sys.exit(main())"
)


def import_path() -> list[str]:
    """This process's import path for an agent: the package root first, then every absolute
    directory of ``sys.path`` (not the working directory, which is the submitter's)."""
    root = str(Path(__file__).resolve().parents[1])
    cwd = os.getcwd()
    path = [root]
    for entry in sys.path:
        if entry and os.path.isabs(entry) and entry != cwd and entry not in path:
            path.append(entry)
    return path


def agent_command(jobset: str, *, fake_nodes: bool = False, python: str = "", jobset_wait: float = 0.0) -> list[str]:
    """The argv that starts one node agent for ``jobset`` (see the module docstring);
    ``jobset_wait`` > 0: the job set may be written after the batch job starts (its agents wait)."""
    if python and python != sys.executable:
        argv = [python, "-m", "hpc.node_agent"]
    else:
        argv = [sys.executable, "-S", "-E", "-c", BOOTSTRAP, os.pathsep.join(import_path())]
    argv += ["--jobset", jobset]
    if fake_nodes:
        argv.append("--fake-nodes")
    if jobset_wait > 0:
        argv += ["--jobset-wait", f"{jobset_wait:g}"]
    return argv
