"""X509 proxy lifetime: warn early, refuse an expired proxy with the time it expired.

A pilot with a dead proxy gets every PanDA call refused and its jobs end as "lost
heartbeat" hours later; checking before the first call turns that into one clear
error (pilot3's code 1163, "Voms proxy not valid").  Only the certificate's validity
dates are read — the proxy's key is never loaded and its contents never logged.

The end date comes from the first certificate in the PEM file (the proxy itself,
which expires first), read with ``cryptography`` when importable, else with
``openssl x509 -enddate -noout``.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import subprocess
from pathlib import Path

from compass_pilot.errors import ErrorCode, PilotError

log = logging.getLogger(__name__)

_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"


class ProxyError(PilotError):
    """No usable proxy: missing, unreadable, not a certificate, or expired."""

    code = ErrorCode.NO_VALID_PROXY


def _first_certificate(data: bytes, path: str) -> bytes:
    start = data.find(_BEGIN)
    end = data.find(_END, start)
    if start < 0 or end < 0:
        raise ProxyError(f"{path}: no PEM certificate found")
    return data[start : end + len(_END)] + b"\n"


def _not_after_cryptography(pem: bytes, path: str) -> datetime.datetime | None:
    try:
        from cryptography import x509
    except ImportError:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ProxyError(f"{path}: not a valid certificate ({exc})") from None
    return cert.not_valid_after_utc


def _not_after_openssl(pem: bytes, path: str) -> datetime.datetime:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ProxyError(f"{path}: cannot read the proxy: neither python 'cryptography' nor 'openssl' is available")
    res = subprocess.run(
        [openssl, "x509", "-enddate", "-noout"], input=pem, capture_output=True, timeout=30, check=False
    )
    text = res.stdout.decode(errors="replace").strip()
    if res.returncode != 0 or not text.startswith("notAfter="):
        raise ProxyError(f"{path}: not a valid certificate (openssl exit {res.returncode})")
    value = text.split("=", 1)[1].strip()  # e.g. "Jun  1 12:00:00 2026 GMT"
    try:
        parsed = datetime.datetime.strptime(" ".join(value.split()), "%b %d %H:%M:%S %Y %Z")
    except ValueError:
        raise ProxyError(f"{path}: unreadable notAfter date {value!r}") from None
    return parsed.replace(tzinfo=datetime.UTC)


def proxy_not_after(path: str | os.PathLike[str], *, use_openssl: bool = False) -> datetime.datetime:
    """The proxy's expiry (aware UTC datetime)."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ProxyError(f"{name}: proxy file not found") from None
    except OSError as exc:
        raise ProxyError(f"{name}: cannot read proxy: {exc.strerror}") from None
    pem = _first_certificate(data, name)
    if not use_openssl:
        found = _not_after_cryptography(pem, name)
        if found is not None:
            return found
    return _not_after_openssl(pem, name)


def check_proxy(path: str | os.PathLike[str], warn_hours: float, *, now: datetime.datetime | None = None) -> float:
    """Seconds of life left; warns under ``warn_hours``; raises ProxyError (1163) once expired."""
    not_after = proxy_not_after(path)
    current = now or datetime.datetime.now(datetime.UTC)
    left = (not_after - current).total_seconds()
    stamp = not_after.strftime("%Y-%m-%d %H:%M:%S UTC")
    if left <= 0:
        raise ProxyError(f"{path}: proxy expired at {stamp}")
    if left < warn_hours * 3600:
        log.warning("proxy %s expires in %.1f h (at %s)", path, left / 3600, stamp)
    return left
