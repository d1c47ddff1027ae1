"""The hostile-client suite's world: a dispatcher that requires X509 or a signed token, a
private CA with a pilot's RFC 3820 proxy, tokens for two pilots and an admin, and the
table every attack adds its row to (printed at the end of the session).
"""

from __future__ import annotations

import datetime
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from compass_pilot.panda.auth import create_key, issue_token, load_key

#: attack → (refused, executed anything, state changed); filled by the tests, printed at the end
RESULTS: dict[str, tuple[bool, bool, bool]] = {}

PILOT_DN = "/DC=ch/DC=cern/OU=Users/CN=compass pilot"
ROGUE_DN = "/DC=ch/DC=cern/OU=Users/CN=someone else"


def record(attack: str, *, refused: bool, executed: bool, changed: bool) -> None:
    """One row of the table; the test asserts the same three facts itself."""
    RESULTS[attack] = (refused, executed, changed)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    width = max(len(a) for a in RESULTS)
    terminalreporter.section("hostile clients: attack × refused × executed anything × state changed")
    terminalreporter.write_line(f"{'attack':<{width}}  refused  executed  changed")
    for attack, (refused, executed, changed) in RESULTS.items():
        terminalreporter.write_line(
            f"{attack:<{width}}  {'yes' if refused else 'NO':<7}  {'YES' if executed else 'no':<8}  "
            f"{'YES' if changed else 'no'}"
        )
    ok = all(r and not e and not c for r, e, c in RESULTS.values())
    terminalreporter.write_line(
        f"{len(RESULTS)} attacks: {'all refused, nothing executed, nothing changed' if ok else 'SOME GOT THROUGH'}"
    )


def db_state(db_path: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the dispatcher holds about jobs, tasks, workers and Harvester instances (not the update log)."""
    conn = sqlite3.connect(db_path)
    try:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in ("tasks", "jobs", "workers", "worker_nodes", "harvester_instances", "harvester_workers")
        }
    finally:
        conn.close()


# -- a private CA, a server certificate and a pilot's RFC 3820 proxy ----------------------
def _name(dn: str) -> x509.Name:
    oids = {"DC": NameOID.DOMAIN_COMPONENT, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "CN": NameOID.COMMON_NAME}
    parts = [p.split("=", 1) for p in dn.strip("/").split("/")]
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in parts])


def _cert(
    subject: x509.Name, issuer: x509.Name, key: Any, signer: Any, *, ca: bool = False, extensions: tuple = ()
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def _pem(*items: Any) -> bytes:
    out = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            out += item.public_bytes(serialization.Encoding.PEM)
        else:
            out += item.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
    return out


@dataclass
class PKI:
    ca: Path
    server_cert: Path
    server_key: Path
    proxy: Path  # the pilot's proxy: proxy cert, its key, the user cert
    rogue_proxy: Path  # a valid proxy of a DN not on the production list
    foreign_proxy: Path  # a proxy from a CA the dispatcher does not trust


def _user_and_proxy(dn: str, ca_name: x509.Name, ca_key: Any, out: Path) -> Path:
    user_key = ec.generate_private_key(ec.SECP256R1())
    user = _cert(_name(dn), ca_name, user_key, ca_key)
    proxy_key = ec.generate_private_key(ec.SECP256R1())
    proxy_name = x509.Name([*_name(dn), x509.NameAttribute(NameOID.COMMON_NAME, "123456789")])
    # ProxyCertInfo (RFC 3820) with the inherit-all policy 1.3.6.1.5.5.7.21.1, DER by hand
    info = bytes.fromhex("300c300a06082b06010505071501")
    proxy = _cert(
        proxy_name,
        user.subject,
        proxy_key,
        user_key,
        extensions=(
            (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14"), info), True),
            (
                x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                True,
            ),
        ),
    )
    out.write_bytes(_pem(proxy, proxy_key, user))
    out.chmod(0o600)
    return out


def make_pki(base: Path) -> PKI:
    base.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("/DC=test/CN=compass test CA")
    ca = _cert(ca_name, ca_name, ca_key, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert(
        _name("/CN=localhost"),
        ca_name,
        server_key,
        ca_key,
        extensions=(
            (x509.SubjectAlternativeName([x509.DNSName("localhost")]), False),
            (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ),
    )
    (base / "ca.pem").write_bytes(_pem(ca))
    (base / "server.pem").write_bytes(_pem(server))
    (base / "server.key").write_bytes(_pem(server_key))
    (base / "server.key").chmod(0o600)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_name = _name("/DC=evil/CN=other CA")
    return PKI(
        ca=base / "ca.pem",
        server_cert=base / "server.pem",
        server_key=base / "server.key",
        proxy=_user_and_proxy(PILOT_DN, ca_name, ca_key, base / "x509up_pilot"),
        rogue_proxy=_user_and_proxy(ROGUE_DN, ca_name, ca_key, base / "x509up_rogue"),
        foreign_proxy=_user_and_proxy(PILOT_DN, other_name, other_key, base / "x509up_foreign"),
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Secured:
    """A running dispatcher that requires X509 (production DN) or a verified token."""

    url: str
    db: str
    dispatcher: Any
    pki: PKI
    key_file: Path
    tokens: dict[str, str] = field(default_factory=dict)  # pilot-a, pilot-b, admin, expired, foreign

    def token_file(self, who: str, where: Path) -> Path:
        path = where / f"token-{who}"
        path.write_text(self.tokens[who] + "\n")
        path.chmod(0o600)
        return path


@pytest.fixture
def secured(tmp_path: Path, pki: PKI) -> Iterator[Secured]:
    from compass_pilot.panda.dispatcher import Dispatcher

    key_file = tmp_path / "dispatcher.key"
    create_key(key_file)
    key = load_key(key_file)
    foreign_key = b"0" * 64
    tokens = {
        "pilot-a": issue_token(key, "pilot-a", "pilot"),
        "pilot-b": issue_token(key, "pilot-b", "pilot"),
        "admin": issue_token(key, "operator", "admin"),
        "expired": issue_token(key, "pilot-a", "pilot", lifetime=-10),
        "foreign": issue_token(foreign_key, "operator", "admin"),
    }
    db = str(tmp_path / "panda.sqlite")
    dispatcher = Dispatcher(
        db,
        "127.0.0.1",
        0,
        certfile=str(pki.server_cert),
        keyfile=str(pki.server_key),
        cafile=str(pki.ca),
        token_key_file=str(key_file),
        pilot_dns=[PILOT_DN],
        check_interval=60,
        request_timeout=2,
    )
    dispatcher.start()
    try:
        yield Secured(dispatcher.url, db, dispatcher, pki, key_file, tokens)
    finally:
        dispatcher.stop()


def json_or_text(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")
