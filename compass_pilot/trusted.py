"""What a pilot may run, and what its payload may see.

A job's ``transformation`` and ``jobPars`` come from the dispatcher, i.e. from whoever
could submit a task.  Like pilot3's trf URL whitelist, the site config — written by the
site's admin, not by the network — decides what runs:

- the package's own demo transformations (``compass-demo-*``), unless ``allow_demo``
  is off;
- a COMPASS job type's script inside the job's software release
  (``<release_root>/<swRelease>/<script>``), named by that script's path or file name;
- a script downloaded from one of ``url_prefixes`` into the job's work dir;
- a command listed verbatim in ``commands`` (a site wrapper).

Anything else fails the job with 1346 before a process exists.  ``jobPars`` become argv
entries (``shlex.split``): no shell ever parses them, so ``; rm -rf /`` is one argument.

The payload's environment is built from an allow-list, never copied from the pilot's:
the pilot holds PanDA credentials (token, X509 proxy) that a payload — which may run
user-supplied code — must not read unless the site config says so.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import urllib.parse
from pathlib import Path

from calibdb.endpoint import CONNECTION_KEYS as CALIB_ENV  # what a calibration DB may hand a payload
from compass_pilot.errors import BadJobSpec, ErrorCode, PilotError
from compass_pilot.job import JobSpec
from compass_pilot.sections import PayloadSection, expand

log = logging.getLogger(__name__)

#: variables every payload gets from the pilot's environment when set
BASE_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "HOSTNAME",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "OMP_NUM_THREADS",
    "X509_CERT_DIR",
    "X509_VOMS_DIR",
    "EOS_MGM_URL",
    "COMPASS_SW_PREFIX",
    "COMPASS_SW_PATH",
    "SLURM_JOB_ID",
    "PBS_JOBID",
)

#: credentials: passed only with ``payload.pass_credentials: true``, whatever else is listed
CREDENTIAL_ENV = (
    "X509_USER_PROXY",
    "X509_USER_CERT",
    "X509_USER_KEY",
    "PANDA_AUTH_TOKEN",
    "PANDA_AUTH_TOKEN_KEY",
    "PANDA_AUTH_ORIGIN",
    "OIDC_AUTH_TOKEN",
    "OIDC_AUTH_ORIGIN",
    "BEARER_TOKEN",
    "BEARER_TOKEN_FILE",
    "COMPASS_PILOT_TOKEN",
    "COMPASS_PILOT_TOKEN_FILE",
)

#: never passed, even when listed: each makes the payload's interpreter run foreign code
FORBIDDEN_ENV = ("LD_PRELOAD", "LD_AUDIT", "BASH_ENV", "ENV", "PYTHONSTARTUP", "PERL5OPT", "PYTHONINSPECT")

_RELEASE_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


class TransformationNotAllowed(BadJobSpec):
    """The job asks for something the site config does not list (pilot3: 1346)."""

    code = ErrorCode.TRANSFORM_NOT_ALLOWED

    def __init__(self, problem: str, field: str = "transformation", panda_id: int | None = None) -> None:
        super().__init__(field, problem, panda_id)


class TransformationDownloadFailed(PilotError):
    """An allowed URL transformation could not be fetched (pilot3: 1149)."""

    code = ErrorCode.TRF_DOWNLOAD_FAILED


def split_job_pars(job: JobSpec) -> list[str]:
    """``jobPars`` as argv entries; no shell involved, so metacharacters stay literal."""
    if "\x00" in job.job_pars:
        raise BadJobSpec("jobPars", "contains a NUL byte", job.panda_id)
    try:
        return shlex.split(job.job_pars)
    except ValueError as exc:
        raise BadJobSpec("jobPars", f"cannot be split: {exc}", job.panda_id) from None


def _release_script(job: JobSpec, policy: PayloadSection) -> Path | None:
    """The trusted script for this job's type and transformation, or None if none matches."""
    for entry in policy.scripts:
        if entry.job_type != job.job_type or not entry.script:
            continue
        if job.transformation not in (entry.script, Path(entry.script).name):
            continue
        if not policy.release_root:
            raise TransformationNotAllowed(
                "payload.release_root is not set: no release script can run", panda_id=job.panda_id
            )
        release = job.sw_release
        if not release or not _RELEASE_RE.match(release) or release in (".", ".."):
            raise TransformationNotAllowed(f"{release!r} is not a release name", "swRelease", job.panda_id)
        root = Path(expand(policy.release_root)).resolve()
        path = (root / release / entry.script).resolve()
        if not path.is_relative_to(root / release):
            raise TransformationNotAllowed(f"{entry.script!r} leaves release {release!r}", panda_id=job.panda_id)
        if not path.is_file() or not os.access(path, os.X_OK):
            raise TransformationNotAllowed(
                f"no executable {entry.script!r} in release {release!r}", panda_id=job.panda_id
            )
        return path
    return None


def _url_allowed(url: str, prefixes: list[str]) -> bool:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("https", "http") or parsed.query or parsed.fragment:
        return False
    if any(part in (".", "..") for part in urllib.parse.unquote(parsed.path).split("/")):
        return False
    return any(prefix and url.startswith(prefix) for prefix in prefixes)


def _download(url: str, workdir: Path, timeout: float) -> Path:
    """Fetch an allowed transformation into the work dir, executable by its owner only."""
    name = Path(urllib.parse.urlsplit(url).path).name or "transformation"
    target = workdir / f"trf.{name}"
    from urllib.request import urlopen  # here: http.client, ssl & email cost a node agent ~20 ms a start

    try:
        with urlopen(url, timeout=timeout) as answer:  # the URL passed _url_allowed
            data = answer.read(64 * 1024 * 1024 + 1)
    except OSError as exc:
        raise TransformationDownloadFailed(f"{url}: {exc}") from None
    if len(data) > 64 * 1024 * 1024:
        raise TransformationDownloadFailed(f"{url}: larger than 64 MiB")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return target


def transformation_argv(job: JobSpec, workdir: Path, policy: PayloadSection) -> list[str]:
    """argv of a non-demo job's payload, or TransformationNotAllowed before anything runs."""
    trf = job.transformation
    if not trf or "\x00" in trf:
        raise TransformationNotAllowed("empty transformation", panda_id=job.panda_id)
    args = split_job_pars(job)
    script = _release_script(job, policy)
    if script is not None:
        return [str(script), *args]
    if "://" in trf:
        if not _url_allowed(trf, policy.url_prefixes):
            raise TransformationNotAllowed(f"{trf[:200]!r} is not under an allowed URL prefix", panda_id=job.panda_id)
        return [str(_download(trf, workdir, policy.download_timeout)), *args]
    if trf in policy.commands:
        return [trf, *args]
    raise TransformationNotAllowed(
        f"transformation {trf[:200]!r} for job type {job.job_type or '?'!r} is not allowed by the site config",
        panda_id=job.panda_id,
    )


def payload_base_env(policy: PayloadSection, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The pilot's variables a payload may see: the base list plus the site's, minus credentials."""
    source = os.environ if environ is None else environ
    names = set(BASE_ENV) | set(policy.env_allow)
    if policy.pass_credentials:
        names |= set(CREDENTIAL_ENV)
    else:
        names -= set(CREDENTIAL_ENV)
    names -= set(FORBIDDEN_ENV)
    return {name: source[name] for name in sorted(names) if name in source}


def calib_payload_env(calib_env: dict[str, str]) -> dict[str, str]:
    """Only the calibration DB's connection keys; anything else is dropped and logged."""
    extra = sorted(set(calib_env) - set(CALIB_ENV))
    if extra:
        log.warning("calibration DB environment: ignoring non-connection keys %s", ", ".join(extra))
    return {k: v for k, v in calib_env.items() if k in CALIB_ENV}
