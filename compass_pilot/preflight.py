"""Preflight: everything a pilot needs checked *before* it asks PanDA for a job.

A job taken from PanDA by a pilot that cannot run it is a job failed for nothing, and a
daemon that keeps asking drains a whole task into failures (PanDA's "black hole").  So
before any getJob the pilot proves it could carry a job to its end:

* the batch adaptor imports (radical.saga) and its job service opens (daemon only);
* the submit command of the URL's scheme is on PATH when the batch system is local
  (``qsub`` for ``pbspro://`` / ``torque://``, ``sbatch`` for ``slurm://``);
* the work directory is writable (a file written, fsynced and removed) and has room;
* the X509 proxy, when one is configured, lives longer than the jobs may need
  (``credentials.check_proxy``: a warning under ``panda.proxy_warn_hours``).

Each check raises :class:`PreflightError` with ONE line naming what is wrong and the
process exit code (:mod:`compass_pilot.exitcodes`) that says so; nothing is fetched.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from compass_pilot.config import SiteConfig, expand
from compass_pilot.exitcodes import ExitCode

log = logging.getLogger(__name__)

#: Submit command a local batch system of each radical.saga scheme needs.
SUBMIT_COMMANDS = {"pbspro": "qsub", "torque": "qsub", "slurm": "sbatch", "condor": "condor_submit"}

#: Before getJob a grid pilot does not know its job's walltime: its proxy must last this long at least.
GRID_MIN_PROXY_SECONDS = 2 * 3600


class PreflightError(Exception):
    """A preflight check failed: ``str(exc)`` is the one-line reason, ``exit_code`` the process exit code."""

    def __init__(self, reason: str, exit_code: ExitCode = ExitCode.PREFLIGHT_FAILED) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


def check_batch(site: SiteConfig, *, timeout: float | None = None) -> None:
    """The batch adaptor imports, the submit command exists, the job service opens within ``timeout``."""
    url = site.hpc.batch_url
    try:
        import radical.saga  # noqa: F401
    except ImportError as exc:
        raise PreflightError(
            f"batch adaptor radical.saga cannot be imported ({exc}): pip install 'compass-pilot[saga]'",
            ExitCode.MISSING_DEPENDENCY,
        ) from None
    from harvester_plugins import saga_backend

    try:
        saga_backend.batch_kind(url)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None
    parts = urlsplit(url)
    scheme, _, tunnel = parts.scheme.partition("+")
    command = SUBMIT_COMMANDS.get(scheme)
    local = not tunnel and (parts.hostname or "localhost") in ("localhost", "127.0.0.1", "")
    if command and local and shutil.which(command) is None:
        raise PreflightError(f"batch_url {url}: submit command {command!r} not found on PATH")
    limit = site.hpc.batch_timeout if timeout is None else timeout
    _within(limit, f"opening job service {url}", lambda: saga_backend.get_service(url))


def check_workdir(path: str | os.PathLike[str], min_free_mb: int) -> None:
    """``path`` exists or can be made, takes a durable write, and has ``min_free_mb`` free."""
    where = Path(expand(str(path)))
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe = where / f".preflight-{os.getpid()}"
        with open(probe, "wb") as handle:
            handle.write(b"preflight\n")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
        stats = os.statvfs(where)
    except OSError as exc:
        raise PreflightError(f"work dir {where} not writable: {exc.strerror or exc}") from None
    free_mb = stats.f_bavail * stats.f_frsize // (1024 * 1024)
    if free_mb < min_free_mb:
        raise PreflightError(f"work dir {where}: {free_mb} MB free, need {min_free_mb} MB")


def proxy_path(site: SiteConfig) -> str:
    """The configured proxy: ``panda.x509_proxy``, else ``X509_USER_PROXY``; "" when none."""
    return expand(site.panda.x509_proxy) if site.panda.x509_proxy else os.environ.get("X509_USER_PROXY", "")


def check_proxy(site: SiteConfig, need_seconds: float) -> None:
    """The proxy (when configured) outlives ``need_seconds``; warns under ``panda.proxy_warn_hours``."""
    path = proxy_path(site)
    if not path:
        return
    from compass_pilot.credentials import ProxyError, check_proxy

    try:
        left = check_proxy(path, site.panda.proxy_warn_hours)
    except ProxyError as exc:
        raise PreflightError(exc.pilot_error_diag(), ExitCode.NO_VALID_PROXY) from None
    if left < need_seconds:
        raise PreflightError(
            f"proxy {path} has {left / 3600:.1f} h left, the jobs may need {need_seconds / 3600:.1f} h",
            ExitCode.NO_VALID_PROXY,
        )


def daemon_proxy_need(site: SiteConfig) -> float:
    """A daemon's jobs may run as long as its longest queue allows, plus an hour to report them."""
    longest = max((q.max_walltime + q.walltime_margin for q in site.hpc.queues), default=0)
    return longest + 3600


def check_daemon(site: SiteConfig) -> None:
    """Everything the MOM-node daemon needs before a getJob; raises PreflightError."""
    check_workdir(site.hpc.shared_dir, site.site.min_free_mb)
    check_proxy(site, daemon_proxy_need(site))
    check_batch(site)


def check_grid(site: SiteConfig) -> None:
    """Everything a grid pilot needs before a getJob; raises PreflightError."""
    check_workdir(site.site.workdir, site.site.min_free_mb)
    if site.panda.verify_proxy:
        check_proxy(site, GRID_MIN_PROXY_SECONDS)


def _within(timeout: float, what: str, call: Callable[[], Any]) -> Any:
    """``call()`` on a helper thread, given up after ``timeout`` s (an ssh to a dead host may hang)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed back to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="preflight", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise PreflightError(f"{what}: no answer within {timeout:.0f} s")
    if "error" in outcome:
        error = outcome["error"]
        message = " ".join(str(error).split())[:300] or type(error).__name__
        raise PreflightError(f"{what} failed: {message}")
    return outcome.get("value")
