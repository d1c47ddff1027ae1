"""The site file's sections a node agent needs, and what builds them from plain data.

A job set carries three sections of the site file (``calibdb``, ``grid``, ``payload``) and
every node agent builds them with :func:`build_section`; the site file as a whole
(:class:`compass_pilot.config.SiteConfig`, its other sections, YAML loading and the checks
across fields) is the daemon's, grid mode's and Harvester's.  Apart, a node agent does not
create the six dataclasses it never uses (~4 ms of each agent's start: 16 start at once per
submission).  :mod:`compass_pilot.config` re-exports everything here, so a section is named
by either module.
"""

from __future__ import annotations

import dataclasses
import os
import string
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from compass_pilot.errors import ConfigError


@dataclass
class GridSection:
    """One pilot, one job at a time (pilot-factory mode)."""

    heartbeat_interval: float = 1800.0  # seconds between running heartbeats (pilot3: 1800)
    max_jobs: int = 1  # jobs to run before exiting (0 = until the server has none)
    payload_grace: float = 60.0  # SIGTERM → SIGKILL grace
    sample_interval: float = 60.0  # psutil sampling of the payload (low rate)
    looping_timeout: float = 0.0  # kill if no output file changes for this long (0 = off)


@dataclass
class CalibDBSection:
    """The calibration database the payload reads."""

    backend: str = "sqlite"  # "sqlite", "mariadb" or "external"
    snapshot: str = ""  # sqlite file, or mariadb datadir / tar; "" = the demo's bundled one
    scratch_dir: str = "${TMPDIR}"  # node-local scratch for the private instance
    start_timeout: float = 60.0
    stop_timeout: float = 30.0
    mariadbd: str = ""  # path of mariadbd; "" = look on PATH and in /usr/sbin
    host: str = ""  # external backend
    port: int = 3306
    user: str = "root"
    password_file: str = ""
    database: str = "calib"


@dataclass
class JobScriptSection:
    """One COMPASS job type's trusted script, inside the job's software release."""

    job_type: str = ""  # processingType: reco, ddd, merge_mdst, …
    script: str = ""  # path relative to <payload.release_root>/<swRelease>/


@dataclass
class PayloadSection:
    """What a pilot may run and what its payloads see (pilot3's trf whitelist, env allow-list).

    Anything the dispatcher sends that is not listed here fails the job (1346) before
    a process starts: whoever can talk to the dispatcher must not get a shell on the nodes.
    """

    allow_demo: bool = True  # the package's own demo payloads (compass-demo-*)
    release_root: str = ""  # software releases live in <release_root>/<swRelease>/
    scripts: list[JobScriptSection] = field(default_factory=list)
    url_prefixes: list[str] = field(default_factory=list)  # transformations downloaded from these only
    commands: list[str] = field(default_factory=list)  # exact transformations run as argv[0] (site wrappers)
    env_allow: list[str] = field(default_factory=list)  # extra variables passed from the pilot's env
    pass_credentials: bool = False  # hand the X509 proxy / token variables to the payload
    download_timeout: float = 60.0  # seconds to fetch a URL transformation


def expand(value: str) -> str:
    """Expand ``${VAR}`` / ``~`` in paths; ``${TMPDIR}`` defaults to /tmp."""
    if "$" not in value and not value.startswith("~"):
        return value  # the usual case, asked per job: no copy of the whole environment
    env = dict(os.environ)
    env.setdefault("TMPDIR", "/tmp")
    return os.path.expanduser(string.Template(value).safe_substitute(env))


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where, source)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {where}: expected {_type_name(tp)}, got {type(value).__name__}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], where, source)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: {where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: {where}: unsupported type {tp}")


def _build(cls: Any, data: dict[str, Any], where: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key {path!r} (known here: {known})")
        kwargs[key] = _convert(value, hints[key], path, source)
    return cls(**kwargs)


def build_section(cls: Any, data: dict[str, Any], where: str, source: str) -> Any:
    """Build and type-check one section dataclass from plain data (job set files, queue configs)."""
    return _build(cls, data, where, source)
