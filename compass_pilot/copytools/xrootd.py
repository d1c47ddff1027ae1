"""XRootD copytool: stage-in from Castor/EOS-style ``root://`` URLs, stage-out to EOS.

``xrdcp`` moves the bytes; on stage-in it checks the expected adler32 itself
(``--cksum adler32:<value>``: computed over the bytes it wrote locally), on stage-out
``--posc`` makes a failed transfer leave nothing behind.  The destination is then
verified with ``xrdfs stat`` (size) and ``xrdfs query checksum`` (the adler32 the
server computes, as EOS does); only a server without a checksum plug-in makes us read
the file back and compute it locally.

Every client call runs with a hard subprocess timeout (``storage.timeout``) and the
client's own retry and timeout knobs turned down: with its defaults ``xrdfs`` against a
dead server hangs for minutes.  Failures are classified from xrdcp's exit code
(XrdCl ``Status::GetShellCode``: 50 generic/local, 51 socket, 52 session/timeouts,
53 xrootd-level such as checksum, 54 the server answered an error) and the ``[30xx]``
kXR error number in its message; only transient ones (connection, server I/O,
overload) are retried, with exponential backoff.
"""

from __future__ import annotations

import logging
import os
import random
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from compass_pilot.config import StorageSection, expand
from compass_pilot.copytools import adler32_of, check_lfn, check_rel_path, source_root, source_sums
from compass_pilot.errors import ConfigError, ErrorCode, PilotError, StageInError, StageOutError
from compass_pilot.job import FileSpec, OutputFileReport

log = logging.getLogger(__name__)

T = TypeVar("T")

# kXR error numbers (XProtocol.hh XErrorCode) that decide what a failure means
_KXR_NOT_FOUND = {3011}
_KXR_PERMISSION = {3010, 3030, 3025}  # NotAuthorized, AuthFailed, fsReadOnly
_KXR_CHECKSUM = {3019}
_KXR_TIMEOUT = {3034, 3035}  # ReqTimedOut, TimerExpired
_KXR_TRANSIENT = {3005, 3007, 3012, 3014, 3024, 3029}  # FSError, IOError, ServerError, noserver, Overloaded, noReplicas
_KXR_UNSUPPORTED = 3013
_KXR_RE = re.compile(r"\[(30\d\d)\]")
_TIMEOUT_RE = re.compile(r"operation expired|socket timeout", re.IGNORECASE)
_LOCAL_NOSPACE_RE = re.compile(r"no space left on device|disk quota exceeded", re.IGNORECASE)
_LOCAL_PERMISSION_RE = re.compile(r"permission denied|read-only file system", re.IGNORECASE)
_CHECKSUM_RE = re.compile(r"checksum error|checksum mismatch|\[3019\]", re.IGNORECASE)
_NOT_FOUND_RE = re.compile(r"no such file or directory|\[3011\]", re.IGNORECASE)


class _Transient(PilotError):
    """A failure worth another attempt (connection refused, server overloaded or I/O error)."""


@dataclass(frozen=True)
class _Done:
    """One finished client command: exit code and its output."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def message(self) -> str:
        """The client's last error line, which names the cause (``[ERROR] Server responded …``)."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if "[ERROR]" in line or "[FATAL]" in line]
        text = (errors or lines or [f"exit code {self.returncode}, no message"])[-1]
        text = "".join(ch for ch in text if ch.isprintable())  # the server's message may end in a NUL
        return text.removeprefix("Run: ")[:300]


def _split_root(url: str, key: str) -> tuple[str, str]:
    """``root://host:port//path`` → (``host:port``, ``/path``); a ConfigError names the bad key."""
    parsed = urlparse(url)
    if parsed.scheme not in ("root", "xroot", "roots", "xroots") or not parsed.netloc:
        raise ConfigError(f"storage.{key}: the xrootd copytool needs a root://host[:port]//path URL, got {url!r}")
    if parsed.query or parsed.fragment or parsed.netloc.startswith("-"):
        raise ConfigError(f"storage.{key}: no '?', '#' or leading '-' allowed in {url!r}")
    return parsed.netloc, "/" + parsed.path.lstrip("/")


class XRootDCopyTool:
    """Copy with xrdcp between a local work dir and ``root://host:port//path`` roots.

    ``storage.retries`` is the number of attempts for transient failures (at least one);
    ``storage.timeout`` bounds each client command, transfer or query.
    """

    def __init__(self, storage: StorageSection) -> None:
        self.storage = storage
        self.input_root = expand(storage.input_root).rstrip("/")
        self.output_root = expand(storage.output_root).rstrip("/")
        _split_root(self.input_root, "input_root")
        _split_root(self.output_root, "output_root")
        if storage.timeout <= 0:
            raise ConfigError(f"storage.timeout: must be positive for the xrootd copytool, got {storage.timeout}")
        timeout = max(1, int(storage.timeout))
        # the client gives up by itself a little before we would kill it, so its own
        # message ("Operation expired") usually says what happened
        self.env = {
            **os.environ,
            "XRD_CONNECTIONRETRY": "1",
            "XRD_CONNECTIONWINDOW": str(min(timeout, 15)),
            "XRD_REQUESTTIMEOUT": str(min(timeout, 60)),
            "XRD_STREAMTIMEOUT": str(min(timeout, 60)),
            "XRD_TIMEOUTRESOLUTION": "1",
        }

    # -- plumbing ------------------------------------------------------------------------
    def _run(self, cmd: list[str], *, stage_in: bool) -> _Done:
        """Run one client command, killed after ``storage.timeout`` (→ 1151 / 1152)."""
        timeout_code = ErrorCode.STAGE_IN_TIMEOUT if stage_in else ErrorCode.STAGE_OUT_TIMEOUT
        error_cls = StageInError if stage_in else StageOutError
        try:
            done = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=self.storage.timeout + 2,  # the client's own timeouts fire first
                env=self.env,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise error_cls(
                f"{cmd[0]} {cmd[-1]} killed after {self.storage.timeout:.0f} s without finishing", timeout_code
            ) from None
        except FileNotFoundError:
            raise error_cls(f"{cmd[0]} not found on PATH (install the xrootd client, xrootd-client)") from None
        return _Done(done.returncode, done.stdout, done.stderr)

    def _retry(self, action: Callable[[], T], what: str, *, stage_in: bool) -> T:
        """Run ``action`` up to ``storage.retries`` times while it fails transiently, backing off exponentially."""
        attempts = max(1, self.storage.retries)
        delay = 1.0
        for attempt in range(1, attempts + 1):
            try:
                return action()
            except _Transient as exc:
                if attempt >= attempts:
                    error_cls = StageInError if stage_in else StageOutError
                    raise error_cls(f"{exc.diag} (after {attempts} attempts)", exc.code) from None
                pause = delay * random.uniform(0.5, 1.5)  # jitter: pilots on one site do not retry in lockstep
                log.warning("%s failed (%s); attempt %d of %d in %.1f s", what, exc.diag, attempt + 1, attempts, pause)
                time.sleep(pause)
                delay = min(delay * 2, 60.0)
        raise AssertionError("unreachable")

    @staticmethod
    def _classify(done: _Done, url: str, *, stage_in: bool) -> PilotError:
        """Turn a failed xrdcp / xrdfs into the pilot error PanDA should see."""
        error_cls = StageInError if stage_in else StageOutError
        failed = ErrorCode.STAGE_IN_FAILED if stage_in else ErrorCode.STAGE_OUT_FAILED
        permission = ErrorCode.STAGE_IN_PERMISSION if stage_in else ErrorCode.STAGE_OUT_PERMISSION
        timeout = ErrorCode.STAGE_IN_TIMEOUT if stage_in else ErrorCode.STAGE_OUT_TIMEOUT
        text = done.stderr
        diag = f"{url}: {done.message} (exit {done.returncode})"
        kxr = {int(n) for n in _KXR_RE.findall(text)}
        if kxr & _KXR_NOT_FOUND or (done.returncode == 53 and _NOT_FOUND_RE.search(text)):
            return error_cls(diag, ErrorCode.MISSING_INPUT if stage_in else failed)
        if kxr & _KXR_PERMISSION or (done.returncode == 52 and "auth" in text.lower()):
            return error_cls(diag, permission)
        if kxr & _KXR_CHECKSUM or _CHECKSUM_RE.search(text):
            return error_cls(diag, ErrorCode.CHECKSUM_MISMATCH)
        if kxr & _KXR_TIMEOUT or _TIMEOUT_RE.search(text):
            return error_cls(diag, timeout)
        if done.returncode == 50:  # local side: the work dir or the local file
            if _LOCAL_NOSPACE_RE.search(text):
                return PilotError(diag, ErrorCode.NO_LOCAL_SPACE)
            if _LOCAL_PERMISSION_RE.search(text):
                return error_cls(diag, permission)
            return error_cls(diag, failed)
        if done.returncode == 51 or kxr & _KXR_TRANSIENT:  # socket errors, server-side I/O or overload
            return _Transient(diag, failed)
        return error_cls(diag, failed)

    def remote_checksum(self, url: str, *, stage_in: bool = False) -> str | None:
        """The adler32 the server computes for ``url``, or None when the server has no checksum configured."""
        host, path = _split_root(url, "url")
        done = self._run(["xrdfs", host, "query", "checksum", path], stage_in=stage_in)
        if done.returncode == 0:
            match = re.search(r"^adler32\s+([0-9a-fA-F]{1,8})\s*$", done.stdout, re.MULTILINE)
            if match is None:
                if re.search(r"^\S+\s+[0-9a-fA-F]+\s*$", done.stdout, re.MULTILINE):
                    return None  # the server computes another algorithm: compare locally
                raise (StageInError if stage_in else StageOutError)(
                    f"{url}: unexpected checksum answer {done.stdout.strip()[:100]!r}"
                )
            return match.group(1).lower().zfill(8)
        if _KXR_UNSUPPORTED in {int(n) for n in _KXR_RE.findall(done.stderr)}:
            return None
        raise self._classify(done, url, stage_in=stage_in)

    def remote_size(self, url: str, *, stage_in: bool = False) -> int:
        """File size from ``xrdfs stat``."""
        host, path = _split_root(url, "url")
        done = self._run(["xrdfs", host, "stat", path], stage_in=stage_in)
        if done.returncode != 0:
            raise self._classify(done, url, stage_in=stage_in)
        match = re.search(r"^Size:\s+(\d+)\s*$", done.stdout, re.MULTILINE)
        if match is None:
            raise (StageInError if stage_in else StageOutError)(
                f"{url}: no size in the stat answer {done.stdout.strip()[:200]!r}"
            )
        return int(match.group(1))

    def _read_back_checksum(self, url: str, workdir: Path) -> str:
        """adler32 of the stored file, read back: the fallback for servers without a checksum plug-in."""
        with tempfile.TemporaryDirectory(dir=workdir, prefix=".verify-") as tmp:
            copy = Path(tmp) / "readback"
            done = self._run(["xrdcp", "--nopbar", "--force", url, str(copy)], stage_in=False)
            if done.returncode != 0:
                raise self._classify(done, url, stage_in=False)
            return adler32_of(copy)

    def _remove_bad_copy(self, url: str) -> None:
        """Best effort: a copy that failed verification must not stay under the final name."""
        host, path = _split_root(url, "url")
        try:
            done = self._run(["xrdfs", host, "rm", path], stage_in=False)
        except PilotError as exc:
            log.warning("could not remove unverified %s: %s", url, exc.diag)
            return
        if done.returncode != 0:
            log.warning("could not remove unverified %s: %s", url, done.message)

    # -- the two directions --------------------------------------------------------------
    def stage_in(self, spec: FileSpec, src_path: str, workdir: Path) -> Path:
        """xrdcp ``<root>/<src_path>`` to ``workdir/<lfn>``; adler32 checked by xrdcp or locally, size here."""
        root = source_root(self.storage, spec, self.input_root, self.output_root)
        url = f"{root}/{check_rel_path(src_path, stage_in=True)}"
        dst = Path(workdir).absolute() / check_lfn(spec.lfn)  # absolute: never read as an option
        expected = spec.adler32.zfill(8) if spec.adler32 else ""

        def attempt() -> None:
            cmd = ["xrdcp", "--nopbar", "--force"]
            if expected:
                cmd += ["--cksum", f"adler32:{expected}"]
            done = self._run([*cmd, url, str(dst)], stage_in=True)
            if done.returncode != 0:
                dst.unlink(missing_ok=True)  # xrdcp leaves a file that failed its checksum
                error = self._classify(done, url, stage_in=True)
                if error.code == ErrorCode.CHECKSUM_MISMATCH:
                    error = StageInError(
                        f"{spec.lfn}: adler32 of the received bytes != expected {expected} ({done.message})",
                        ErrorCode.CHECKSUM_MISMATCH,
                    )
                raise error

        self._retry(attempt, f"stage-in of {url}", stage_in=True)
        size = dst.stat().st_size
        if spec.fsize and size != spec.fsize:
            dst.unlink(missing_ok=True)
            raise StageInError(f"{spec.lfn}: size {size} != expected {spec.fsize}", ErrorCode.CHECKSUM_MISMATCH)
        log.info("staged in %s from %s (%d bytes%s)", spec.lfn, url, size, ", adler32 verified" if expected else "")
        return dst

    def stage_out(
        self, local: Path, dest_path: str, *, guid: str, known: tuple[int, str] | None = None
    ) -> OutputFileReport:
        """xrdcp ``local`` to ``<output_root>/<dest_path>``, then verify size and adler32 on the server
        (against ``known``, the node agent's, when given: the file is then read once, by xrdcp)."""
        url = f"{self.output_root}/{check_rel_path(dest_path, stage_in=False)}"
        local = Path(local).absolute()  # absolute: never read as an option
        try:
            size = local.stat().st_size
            checksum = source_sums(local, size, known)
        except OSError as exc:
            raise StageOutError(f"cannot read {local}: {exc.strerror}") from None

        def attempt() -> None:
            # --posc: a failed transfer leaves nothing at the destination; --path creates dirs
            done = self._run(["xrdcp", "--nopbar", "--force", "--posc", "--path", str(local), url], stage_in=False)
            if done.returncode != 0:
                raise self._classify(done, url, stage_in=False)

        self._retry(attempt, f"stage-out of {local.name} to {url}", stage_in=False)
        remote_size = self.remote_size(url)
        remote_sum = self.remote_checksum(url)
        how = "server"
        if remote_sum is None:
            remote_sum, how = self._read_back_checksum(url, local.parent), "read back"
        if (remote_size, remote_sum) != (size, checksum):
            self._remove_bad_copy(url)
            raise StageOutError(
                f"{local.name}: destination {url} has size {remote_size} adler32 {remote_sum} ({how}), "
                f"source has size {size} adler32 {checksum}",
                ErrorCode.CHECKSUM_MISMATCH,
            )
        log.info("staged out %s → %s (%d bytes, adler32 %s, verified by %s)", local.name, url, size, checksum, how)
        return OutputFileReport(lfn=local.name, guid=guid, fsize=size, adler32=checksum, surl=url)
