"""X509 proxy lifetime check with certificates made here (openssl CLI, and python cryptography for an expired one)."""

from __future__ import annotations

import datetime
import logging
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from compass_pilot.credentials import ProxyError, check_proxy, proxy_not_after
from compass_pilot.errors import ErrorCode


def _openssl_cert(tmp_path: Path, days: int) -> Path:
    key, cert = tmp_path / f"key{days}.pem", tmp_path / f"cert{days}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", str(days), "-subj", "/CN=compass proxy"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    proxy = tmp_path / f"x509up_{days}"
    proxy.write_bytes(cert.read_bytes() + key.read_bytes())  # a proxy file: cert then key
    return proxy


def _expired_cert(tmp_path: Path) -> tuple[Path, datetime.datetime]:
    """OpenSSL 3.0's CLI cannot backdate (-not_after needs 3.4+), so cryptography builds it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired proxy")])
    end = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(end - datetime.timedelta(days=1)).not_valid_after(end)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    path = tmp_path / "x509up_expired"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, end


def test_long_lived_proxy_passes_without_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    proxy = _openssl_cert(tmp_path, 30)
    with caplog.at_level(logging.WARNING):
        left = check_proxy(proxy, warn_hours=24)
    assert 29 * 86400 < left <= 30 * 86400
    assert not caplog.records
    assert proxy_not_after(proxy) == proxy_not_after(proxy, use_openssl=True)  # both readers agree


def test_short_proxy_warns_without_leaking_contents(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    proxy = _openssl_cert(tmp_path, 1)
    with caplog.at_level(logging.WARNING):
        left = check_proxy(proxy, warn_hours=48)
    assert 0 < left <= 86400
    assert "expires in" in caplog.text
    assert "BEGIN" not in caplog.text and "PRIVATE" not in caplog.text


def test_expired_proxy_refused_with_expiry_time(tmp_path: Path) -> None:
    proxy, end = _expired_cert(tmp_path)
    with pytest.raises(ProxyError) as info:
        check_proxy(proxy, warn_hours=24)
    assert info.value.code == ErrorCode.NO_VALID_PROXY == 1163
    assert "2024-01-02 03:04:05 UTC" in str(info.value)
    assert proxy_not_after(proxy, use_openssl=True) == end


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(ProxyError, match="not found"):
        check_proxy(tmp_path / "nope", warn_hours=1)
    junk = tmp_path / "junk"
    junk.write_text("not a certificate")
    with pytest.raises(ProxyError, match="no PEM certificate"):
        check_proxy(junk, warn_hours=1)
    broken = tmp_path / "broken"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ProxyError, match="not a valid certificate"):
        check_proxy(broken, warn_hours=1)
    with pytest.raises(ProxyError, match="not a valid certificate"):
        proxy_not_after(broken, use_openssl=True)
