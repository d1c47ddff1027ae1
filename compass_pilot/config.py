"""Site configuration: one YAML file per site, validated on load.

A site admin edits these files by hand on a MOM node or a pilot factory; a typo
must fail at start with the file, the key and the expected type, not hours later
in a batch job.  Each section is a dataclass; the loader walks the YAML against the
dataclass fields and refuses unknown keys and wrong types.
"""

from __future__ import annotations

import dataclasses
import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from compass_pilot.errors import ConfigError

# The sections a node agent's job set carries live in compass_pilot.sections (see why there);
# named here as ever, so ``from compass_pilot.config import GridSection`` keeps working.
from compass_pilot.sections import CalibDBSection as CalibDBSection
from compass_pilot.sections import GridSection as GridSection
from compass_pilot.sections import JobScriptSection as JobScriptSection
from compass_pilot.sections import PayloadSection as PayloadSection
from compass_pilot.sections import build_section as build_section
from compass_pilot.sections import expand as expand


@dataclass
class SiteSection:
    """Who we are to PanDA and where jobs run."""

    name: str = "LOCAL"  # PanDA queue name, sent as siteName / site_name
    resource_type: str = "SCORE"
    computing_element: str = ""
    job_label: str = "managed"  # prodSourceLabel asked for
    workdir: str = "${TMPDIR}/compass-pilot"  # pilot work root; one subdir per job
    min_free_mb: int = 1024  # preflight: the work dir needs this much free space before any getJob
    version_tag: str = "PR"  # pilot3 -i: PR (production) or RC (release candidate), in the pilotID


@dataclass
class PandaSection:
    """How to reach the PanDA server (or the embedded dispatcher)."""

    url: str = "http://127.0.0.1:25080"
    # "v1" (/api/v1/pilot/<method>, what today's server answers) or "legacy" (/server/panda/<method>, 403 there)
    dialect: str = "v1"
    verify_proxy: bool = True  # check the X509 proxy's lifetime before any getJob (pilot3 -t turns it off)
    timeout: float = 60.0  # seconds per request
    retries: int = 5  # attempts on connection errors and 5xx
    backoff: float = 1.0  # first backoff in seconds, doubled each retry, with jitter
    backoff_max: float = 60.0
    x509_proxy: str = ""  # proxy file used as client cert + key; "" = X509_USER_PROXY if set
    ca_dir: str = ""  # CA directory; "" = X509_CERT_DIR or /etc/grid-security/certificates if present
    token_file: str = ""  # bearer token file; "" = OIDC_AUTH_TOKEN / PANDA_AUTH_TOKEN if set
    origin: str = ""  # Origin header sent with a token (the VO / issuer)
    verify: bool = True  # verify the server certificate (https only)
    proxy_warn_hours: float = 24.0  # warn when the proxy has less life than this
    max_response_bytes: int = 64 * 1024 * 1024  # refuse larger answers


@dataclass
class StorageSection:
    """Where input comes from and output goes: a local root or an XRootD endpoint."""

    copytool: str = "local"  # "local" or "xrootd"
    input_root: str = ""  # local dir or root://host:port//path
    output_root: str = ""
    link_inputs: bool = False  # local copytool: symlink instead of copy
    link_outputs: bool = True  # local copytool: hard-link an output on the same file system instead of copying it
    output_endpoint: str = "EOS"  # inputs whose ddmEndPointIn is this are read from output_root (merging)
    retries: int = 3
    timeout: float = 600.0  # seconds per transfer


@dataclass
class QueueSection:
    """One batch queue class: which job types go there and how long they may run."""

    name: str = "long"  # the batch system's queue name
    job_types: list[str] = field(default_factory=list)
    max_walltime: int = 18 * 3600  # seconds
    walltime_margin: int = 600  # added to the jobs' own limit


@dataclass
class HPCSection:
    """Multi-job mode on a MOM node."""

    max_jobs: int = 512  # per submission
    max_nodes: int = 16
    slots_per_node: int = 32
    max_submissions: int = 2  # in flight at once
    poll_interval: float = 30.0  # seconds between rounds (reading the node agents' result files)
    batch_check_interval: float = 300.0  # seconds between questions to the batch system (qstat / squeue)
    heartbeat_interval: float = 1800.0
    no_jobs_backoff: float = 60.0  # first wait when PanDA has no jobs (doubles, capped)
    no_jobs_backoff_max: float = 1800.0
    launcher: str = "mpiexec"  # "mpiexec", "aprun" or "srun"
    batch_url: str = "fork://localhost"  # radical.saga job service URL
    project: str = ""  # account / allocation
    fake_nodes: bool = False  # one host plays several nodes (tests, demo)
    shared_dir: str = "${TMPDIR}/compass-pilot/hpc"  # visible from MOM and compute nodes
    python: str = ""  # interpreter on the compute nodes; "" = this one
    transfer_threads: int = 8  # stage-ins / stage-outs of a submission run this many at a time
    batch_timeout: float = 120.0  # seconds any one batch-system call (open, qsub, qstat, qdel) may take
    submit_backoff: float = 60.0  # first wait after a temporary submission failure (doubles, capped)
    submit_backoff_max: float = 1800.0
    submit_deadline: float = 6 * 3600.0  # jobs whose submission is not accepted this long after fetching fail
    breaker_threshold: int = 3  # consecutive failed submissions that open the circuit breaker (stop fetching)
    agent_timeout: float = 600.0  # a node agent silent this long is lost: its jobs fail (1390)
    # The batch job is submitted while its inputs are still staged in; its node agents wait this long
    # for the job set (written when stage-in ends).  0 = stage in first, submit after (the job set is
    # there before the batch job exists).
    jobset_wait: float = 600.0
    failed_dir_keep_hours: float = 72.0  # failed jobs' work dirs kept this long for debugging
    # Node agents wake the daemon with signed UDP datagrams (hpc/notify.py) when payloads start and end:
    # "auto" = 127.0.0.1 for fork:// or fake nodes, else all interfaces; "off" = files and polling only
    notify_bind: str = "auto"
    notify_host: str = ""  # the name agents send to; "" = 127.0.0.1 when bound there, else this host's FQDN
    notify_port: int = 0  # 0 = any free port (a restarted daemon's old submissions then fall back to polling)
    queues: list[QueueSection] = field(
        default_factory=lambda: [
            QueueSection(name="long", job_types=["reco", "ddd"], max_walltime=18 * 3600),
            QueueSection(name="medium", job_types=["merge_mdst"], max_walltime=6 * 3600),
            QueueSection(name="short", job_types=["merge_hist", "merge_dump", "xcheck"], max_walltime=2 * 3600),
        ]
    )


@dataclass
class SiteConfig:
    """The whole site file."""

    site: SiteSection = field(default_factory=SiteSection)
    panda: PandaSection = field(default_factory=PandaSection)
    grid: GridSection = field(default_factory=GridSection)
    storage: StorageSection = field(default_factory=StorageSection)
    calibdb: CalibDBSection = field(default_factory=CalibDBSection)
    hpc: HPCSection = field(default_factory=HPCSection)
    payload: PayloadSection = field(default_factory=PayloadSection)
    journal: str = ""  # journal file; "" = <workdir>/journal.sqlite
    source: str = "<defaults>"  # the file it came from (not a YAML key)


_CHOICES = {
    ("panda", "dialect"): ("legacy", "v1"),
    ("storage", "copytool"): ("local", "xrootd"),
    ("calibdb", "backend"): ("sqlite", "mariadb", "external"),
    ("hpc", "launcher"): ("mpiexec", "aprun", "srun"),
}


def validate(config: SiteConfig) -> SiteConfig:
    """Checks across fields that types alone cannot express."""
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in choices:
            raise ConfigError(f"{config.source}: {section}.{key}: expected one of {', '.join(choices)}, got {value!r}")
    hpc = config.hpc
    for key in ("max_jobs", "max_nodes", "slots_per_node", "max_submissions", "transfer_threads"):
        if getattr(hpc, key) < 1:
            raise ConfigError(f"{config.source}: hpc.{key}: expected a positive integer, got {getattr(hpc, key)}")
    if hpc.max_jobs > hpc.max_nodes * hpc.slots_per_node:
        raise ConfigError(
            f"{config.source}: hpc.max_jobs: {hpc.max_jobs} exceeds max_nodes × slots_per_node "
            f"({hpc.max_nodes} × {hpc.slots_per_node})"
        )
    if not hpc.queues:
        raise ConfigError(f"{config.source}: hpc.queues: expected at least one queue, got []")
    if hpc.breaker_threshold < 1:
        raise ConfigError(f"{config.source}: hpc.breaker_threshold: expected a positive integer")
    if not hpc.jobset_wait >= 0:
        raise ConfigError(f"{config.source}: hpc.jobset_wait: expected seconds >= 0, got {hpc.jobset_wait}")
    seen: dict[str, str] = {}
    for i, queue in enumerate(hpc.queues):
        for job_type in queue.job_types:
            if job_type in seen:
                raise ConfigError(
                    f"{config.source}: hpc.queues[{i}].job_types: {job_type!r} is already in queue {seen[job_type]!r}"
                )
            seen[job_type] = queue.name
    for i, prefix in enumerate(config.payload.url_prefixes):
        if not prefix.startswith(("https://", "http://")) or prefix.count("/") < 3 or not prefix.endswith("/"):
            raise ConfigError(
                f"{config.source}: payload.url_prefixes[{i}]: expected an http(s) URL ending in '/', got {prefix!r}"
            )
    for i, entry in enumerate(config.payload.scripts):
        if not entry.job_type or not entry.script or entry.script.startswith("/") or ".." in entry.script.split("/"):
            raise ConfigError(
                f"{config.source}: payload.scripts[{i}]: expected a job_type and a script path inside the release"
            )
    if config.grid.heartbeat_interval < 1 or hpc.poll_interval < 1:
        raise ConfigError(f"{config.source}: heartbeat and poll intervals must be at least 1 s (no busy polling)")
    if config.grid.looping_timeout < 0:
        raise ConfigError(
            f"{config.source}: grid.looping_timeout: expected seconds ≥ 0 (0 = off), got {config.grid.looping_timeout}"
        )
    _validate_urls(config)
    return config


def panda_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a PanDA server URL, or None (http(s)://host[:port][/path])."""
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return f"{url!r} is not an http:// or https:// URL with a host"
    try:
        parsed.port  # noqa: B018 - raises on a non-numeric port
    except ValueError:
        return f"{url!r} has a bad port"
    return None


def _validate_urls(config: SiteConfig) -> None:
    """URL-valued keys refused at load, so a typo fails now and not in the first batch job."""
    problem = panda_url_problem(config.panda.url)
    if problem:
        raise ConfigError(f"{config.source}: panda.url: {problem}")
    storage = config.storage
    for key in ("input_root", "output_root"):
        value = getattr(storage, key)
        scheme = urlsplit(value).scheme if "://" in value else ""
        if storage.copytool == "xrootd" and value and scheme not in _XROOTD_SCHEMES:
            raise ConfigError(
                f"{config.source}: storage.{key}: the xrootd copytool needs a root://host//path URL, got {value!r}"
            )
        if storage.copytool == "local" and scheme and scheme != "file":
            raise ConfigError(
                f"{config.source}: storage.{key}: the local copytool takes a directory, got the URL {value!r}"
                " (set storage.copytool: xrootd for root:// URLs)"
            )
    # the batch plugins' own table, so the two cannot drift (saga_backend imports nothing heavy)
    from harvester_plugins.saga_backend import SCHEME_KINDS

    batch = urlsplit(config.hpc.batch_url)
    scheme = batch.scheme.split("+")[0]
    if scheme not in SCHEME_KINDS:
        raise ConfigError(
            f"{config.source}: hpc.batch_url: unsupported scheme in {config.hpc.batch_url!r}"
            f" (expected one of {', '.join(f'{k}://' for k in sorted(SCHEME_KINDS))})"
        )


_XROOTD_SCHEMES = ("root", "xroot", "roots", "xroots")


def _unset_variables(data: Any, where: str, source: str) -> None:
    """Refuse ``${VAR}`` / ``$VAR`` the environment does not define (TMPDIR defaults to /tmp).

    ``safe_substitute`` would leave the reference as it is, and the pilot would then
    create a directory literally named ``${NO_SUCH_VAR}``.
    """
    if isinstance(data, dict):
        for key, value in data.items():
            _unset_variables(value, f"{where}.{key}" if where else str(key), source)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _unset_variables(value, f"{where}[{i}]", source)
    elif isinstance(data, str):
        for match in string.Template.pattern.finditer(data):
            name = match.group("named") or match.group("braced")
            if name and name != "TMPDIR" and name not in os.environ:
                raise ConfigError(
                    f"{source}: {where}: ${{{name}}} is not set in this environment (export it, or write the path out)"
                )


def load_site_config(path: str | os.PathLike[str] | None) -> SiteConfig:
    """Load and validate a site file; ``None`` gives the embedded defaults."""
    if path is None:
        return validate(SiteConfig())
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read site config: {exc.strerror}") from None
    import yaml  # here, not at the top: node agents import this module and never read YAML (30 ms each)

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        # an empty file silently meaning "all defaults" hides a truncated copy or a wrong path
        raise ConfigError(f"{source}: the file is empty (give no site config to run with the embedded defaults)")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    _unset_variables(data, "", source)
    config = build_section(SiteConfig, data, "", source)
    config.source = source
    return validate(config)


def config_to_dict(config: SiteConfig) -> dict[str, Any]:
    """The config as plain data (to hand to a node agent or to print)."""
    data = dataclasses.asdict(config)
    data.pop("source", None)
    return data
