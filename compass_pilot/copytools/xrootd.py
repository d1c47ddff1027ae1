"""XRootD copytool: stage-in from Castor/EOS-style ``root://`` URLs, stage-out to EOS.

``xrdcp`` moves the bytes; the destination is then verified with ``xrdfs stat`` (size)
and ``xrdfs query checksum`` (adler32, what EOS computes), falling back to a local
computation only when the server has no checksum configured.  ``xrdfs`` against a
dead server hangs for minutes, so every call runs with a hard timeout and the
client's own retry knobs turned down.  Failures map to pilot codes: missing input
1331, permission 1175/1176, checksum 1229, timeout 1151/1152; transient errors are
retried with exponential backoff.
"""

from __future__ import annotations

import logging
import os
import random
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

from compass_pilot.config import StorageSection, expand
from compass_pilot.copytools import adler32_of, check_rel_path, source_root
from compass_pilot.errors import ErrorCode, PilotError, StageInError, StageOutError
from compass_pilot.job import FileSpec, OutputFileReport

log = logging.getLogger(__name__)

_ENV = {"XRD_CONNECTIONRETRY": "1", "XRD_CONNECTIONWINDOW": "10", "XRD_REQUESTTIMEOUT": "60", "XRD_STREAMTIMEOUT": "60"}
_NOT_FOUND = re.compile(r"\[3011\]|no such file|not found", re.IGNORECASE)
_PERMISSION = re.compile(r"\[3010\]|permission denied|not authorized", re.IGNORECASE)
_CHECKSUM = re.compile(r"checksum", re.IGNORECASE)


class _Transient(Exception):
    pass


class XRootDCopyTool:
    """Copy with xrdcp between a local work dir and ``root://host:port//path`` roots."""

    def __init__(self, storage: StorageSection) -> None:
        self.storage = storage
        self.input_root = expand(storage.input_root).rstrip("/")
        self.output_root = expand(storage.output_root).rstrip("/")
        for root in (self.input_root, self.output_root):
            if not root.startswith("root://"):
                raise PilotError(f"xrootd copytool needs root:// roots, got {root!r}")

    # -- plumbing ------------------------------------------------------------------------
    def _run(self, cmd: list[str], timeout_code: int) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=self.storage.timeout,
                env={**os.environ, **_ENV},
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise PilotError(f"{cmd[0]} timed out after {self.storage.timeout:.0f} s", timeout_code) from None
        except FileNotFoundError:
            raise PilotError(f"{cmd[0]} not found (install xrootd-client)") from None

    def _retry(self, action, what: str):  # type: ignore[no-untyped-def]
        delay = 1.0
        for attempt in range(1, max(1, self.storage.retries) + 1):
            try:
                return action()
            except _Transient as exc:
                if attempt >= self.storage.retries:
                    raise PilotError(f"{what}: {exc}", getattr(exc, "code", ErrorCode.GENERAL)) from None
                log.warning("%s failed (%s), retry %d in %.1f s", what, exc, attempt, delay)
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay *= 2
        raise AssertionError("unreachable")

    @staticmethod
    def _split(url: str) -> tuple[str, str]:
        parsed = urlparse(url)
        return parsed.netloc, "/" + parsed.path.lstrip("/")

    def _classify(self, stderr: str, stage_in: bool) -> PilotError | _Transient:
        error_cls = StageInError if stage_in else StageOutError
        text = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
        if _NOT_FOUND.search(stderr) and stage_in:
            return StageInError(text, ErrorCode.MISSING_INPUT)
        if _PERMISSION.search(stderr):
            return error_cls(text, ErrorCode.STAGE_IN_PERMISSION if stage_in else ErrorCode.STAGE_OUT_PERMISSION)
        if _CHECKSUM.search(stderr):
            return error_cls(text, ErrorCode.CHECKSUM_MISMATCH)
        transient = _Transient(text)
        transient.code = ErrorCode.STAGE_IN_FAILED if stage_in else ErrorCode.STAGE_OUT_FAILED  # type: ignore[attr-defined]
        return transient

    def remote_checksum(self, url: str) -> str | None:
        """adler32 the server computes, or None when it has no checksum configured."""
        host, path = self._split(url)
        done = self._run(["xrdfs", host, "query", "checksum", path], ErrorCode.STAGE_OUT_TIMEOUT)
        match = re.search(r"adler32\s+([0-9a-fA-F]{1,8})", done.stdout)
        return match.group(1).lower().zfill(8) if done.returncode == 0 and match else None

    def remote_size(self, url: str) -> int | None:
        host, path = self._split(url)
        done = self._run(["xrdfs", host, "stat", path], ErrorCode.STAGE_OUT_TIMEOUT)
        match = re.search(r"^Size:\s+(\d+)", done.stdout, re.MULTILINE)
        return int(match.group(1)) if done.returncode == 0 and match else None

    # -- the two directions --------------------------------------------------------------
    def stage_in(self, spec: FileSpec, src_path: str, workdir: Path) -> Path:
        root = source_root(self.storage, spec, self.input_root, self.output_root)
        url = f"{root}/{check_rel_path(src_path, stage_in=True)}"
        dst = Path(workdir) / spec.lfn

        def attempt() -> Path:
            cmd = ["xrdcp", "--nopbar", "--force"]
            if spec.adler32:
                cmd += ["--cksum", f"adler32:{spec.adler32.zfill(8)}"]
            done = self._run([*cmd, url, str(dst)], ErrorCode.STAGE_IN_TIMEOUT)
            if done.returncode != 0:
                dst.unlink(missing_ok=True)
                error = self._classify(done.stderr, stage_in=True)
                raise error
            return dst

        self._retry(attempt, f"stage-in of {src_path}")
        size = dst.stat().st_size
        if spec.fsize and size != spec.fsize:
            raise StageInError(f"{spec.lfn}: size {size} != expected {spec.fsize}", ErrorCode.CHECKSUM_MISMATCH)
        if spec.adler32 and adler32_of(dst) != spec.adler32.zfill(8):
            raise StageInError(
                f"{spec.lfn}: adler32 {adler32_of(dst)} != expected {spec.adler32}", ErrorCode.CHECKSUM_MISMATCH
            )
        log.info("staged in %s from %s (%d bytes)", spec.lfn, url, size)
        return dst

    def stage_out(self, local: Path, dest_path: str, *, guid: str) -> OutputFileReport:
        url = f"{self.output_root}/{check_rel_path(dest_path, stage_in=False)}"
        local = Path(local)
        size, checksum = local.stat().st_size, adler32_of(local)

        def attempt() -> None:
            # --posc: a failed transfer leaves nothing at the destination; --path creates dirs
            done = self._run(
                ["xrdcp", "--nopbar", "--force", "--posc", "--path", str(local), url], ErrorCode.STAGE_OUT_TIMEOUT
            )
            if done.returncode != 0:
                raise self._classify(done.stderr, stage_in=False)

        self._retry(attempt, f"stage-out of {local.name}")
        remote_size = self.remote_size(url)
        remote_sum = self.remote_checksum(url) or checksum
        if remote_size != size or remote_sum != checksum:
            raise StageOutError(
                f"{local.name}: destination has size {remote_size} adler32 {remote_sum}, source {size} {checksum}",
                ErrorCode.CHECKSUM_MISMATCH,
            )
        log.info("staged out %s → %s (%d bytes, adler32 %s)", local.name, url, size, checksum)
        return OutputFileReport(lfn=local.name, guid=guid, fsize=size, adler32=checksum, surl=url)
