"""Who is calling the dispatcher, and what they may do: X509 DNs and signed bearer tokens.

As on the real PanDA server, a pilot proves itself with an X509 proxy (a client
certificate verified against the CA dir during the TLS handshake; its DN must be on
the production list) or with a bearer token.  The dispatcher issues its own tokens —
``compass-pilot dispatcher token --identity NAME --role pilot|admin`` — signed with
HMAC-SHA256 under a key file only its owner can read, so a token is verified, never
just present.

Roles: ``pilot`` may fetch jobs and report on the jobs it was given; ``admin`` may also
submit tasks and kill jobs.  Without any authentication configured the dispatcher only
serves loopback (the demo); the wire module refuses to bind elsewhere.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compass_pilot.errors import ConfigError
from compass_pilot.filemodes import write_private_text
from compass_pilot.panda.constants import ROLES

TOKEN_PREFIX = "cpt1"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.@:+=/ -]{1,200}$")
#: a proxy's own CN (RFC 3820: a number; legacy Globus: "proxy", "limited proxy")
_PROXY_CN = re.compile(r"/CN=(\d+|proxy|limited proxy)$")

# legacy StatusCodes (panda-server Protocol): 40 non-secure, 50 invalid token, 60 missing role
SC_NON_SECURE, SC_INVALID_TOKEN, SC_MISSING_ROLE = 40, 50, 60


@dataclass(frozen=True)
class Identity:
    """An authenticated caller: the name a job is bound to, its role and how it proved it."""

    name: str
    role: str
    method: str  # "x509", "token" or "none" (unauthenticated loopback demo)

    @property
    def label(self) -> str:
        """What the updates table records (never the token itself)."""
        return self.method if self.method == "none" else f"{self.method}:{self.name}"


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused: HTTP status, legacy StatusCode and a one-line reason."""

    http_status: int
    status_code: int
    reason: str


ANONYMOUS = Identity("", "admin", "none")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def create_key(path: str | os.PathLike[str]) -> Path:
    """A new random signing key in a 0600 file (refuses to overwrite one)."""
    target = Path(path)
    if target.exists():
        raise ConfigError(f"{target}: a token key already exists (remove it to invalidate every token)")
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_private_text(target, secrets.token_hex(32) + "\n")


def load_key(path: str | os.PathLike[str]) -> bytes:
    """The signing key; refused unless the file is ours and unreadable by anyone else."""
    target = Path(path)
    try:
        st = os.stat(target)
        text = target.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{target}: cannot read token key: {exc.strerror}") from None
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"{target}: token key must be owned by us with mode 0600 (is {stat.S_IMODE(st.st_mode):04o})")
    if len(text) < 32:
        raise ConfigError(f"{target}: token key too short")
    return text.encode()


def issue_token(key: bytes, identity: str, role: str, lifetime: float = 30 * 86400) -> str:
    """A signed token ``cpt1.<claims>.<hmac>`` naming an identity and a role."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not _NAME_RE.match(identity):
        raise ValueError(f"identity {identity!r}: letters, digits and _ . @ : + = / - only")
    claims = _b64(json.dumps({"sub": identity, "role": role, "exp": int(time.time() + lifetime)}).encode())
    signature = _b64(hmac.new(key, f"{TOKEN_PREFIX}.{claims}".encode(), "sha256").digest())
    return f"{TOKEN_PREFIX}.{claims}.{signature}"


def verify_token(key: bytes, token: str, now: float | None = None) -> Identity | None:
    """The token's identity if its signature, expiry and claims hold; None otherwise."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        return None
    expected = _b64(hmac.new(key, f"{TOKEN_PREFIX}.{parts[1]}".encode(), "sha256").digest())
    if not hmac.compare_digest(expected, parts[2]):
        return None
    try:
        claims = json.loads(_unb64(parts[1]))
    except ValueError:
        return None
    if not isinstance(claims, dict):
        return None
    name, role, exp = claims.get("sub"), claims.get("role"), claims.get("exp")
    if not isinstance(name, str) or not _NAME_RE.match(name) or role not in ROLES or not isinstance(exp, int):
        return None
    if exp < (time.time() if now is None else now):
        return None
    return Identity(name, role, "token")


#: ssl's long attribute names → the OpenSSL one-line DN short names PanDA's DN lists use
_SHORT_NAMES = {
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "commonName": "CN",
    "domainComponent": "DC",
}


def cert_dn(peer_cert: dict[str, Any]) -> str:
    """A verified peer certificate's subject as a one-line DN (``/DC=ch/DC=cern/OU=Users/CN=…``)."""
    return "".join(f"/{_SHORT_NAMES.get(k, k)}={v}" for rdn in peer_cert.get("subject", ()) for k, v in rdn)


def base_dn(dn: str) -> str:
    """The DN without its proxy CNs: a renewed proxy is the same pilot identity."""
    while True:
        stripped = _PROXY_CN.sub("", dn)
        if stripped == dn:
            return dn
        dn = stripped


def _dn_matches(dn: str, patterns: Iterable[str]) -> bool:
    return any(dn == p for p in patterns if p)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only ("" and 0.0.0.0 serve every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Authenticator:
    """The dispatcher's policy: which credentials it accepts and which role each DN or token has."""

    def __init__(
        self,
        *,
        token_key: bytes | None = None,
        x509: bool = False,
        pilot_dns: Iterable[str] = (),
        admin_dns: Iterable[str] = (),
    ) -> None:
        self.token_key = token_key
        self.x509 = x509
        self.pilot_dns = [base_dn(d) for d in pilot_dns]
        self.admin_dns = [base_dn(d) for d in admin_dns]

    @property
    def required(self) -> bool:
        return self.token_key is not None or self.x509

    def identify(self, headers: Mapping[str, str], peer_cert: dict[str, Any] | None) -> Identity | Refusal:
        """The caller's identity, or why it is refused; a presented credential must verify."""
        if not self.required:
            return ANONYMOUS
        authorization = headers.get("Authorization") or ""
        if authorization:
            if self.token_key is None or not authorization.startswith("Bearer "):
                return Refusal(401, SC_INVALID_TOKEN, "invalid token: this dispatcher does not accept it")
            identity = verify_token(self.token_key, authorization[7:].strip())
            if identity is None:
                return Refusal(401, SC_INVALID_TOKEN, "invalid token: bad signature, expired or malformed")
            return identity
        if self.x509 and peer_cert:
            dn = base_dn(cert_dn(peer_cert))
            if _dn_matches(dn, self.admin_dns):
                return Identity(dn, "admin", "x509")
            if _dn_matches(dn, self.pilot_dns):
                return Identity(dn, "pilot", "x509")
            return Refusal(403, SC_MISSING_ROLE, f"missing role: DN {dn} is not on the production list")
        return Refusal(401, SC_NON_SECURE, "authentication required: a client certificate or a bearer token")

    @staticmethod
    def allows(identity: Identity, need: str) -> Refusal | None:
        """None if ``identity`` has the role ``need`` ("pilot" or "admin"); admin implies pilot."""
        if need == "admin" and identity.role != "admin":
            return Refusal(403, SC_MISSING_ROLE, f"permission denied: {need} role required")
        return None
