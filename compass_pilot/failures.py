"""Expected failures → one line on stderr and a distinct exit code.

An operator reading a pilot-factory log or a cron mail needs the thing that failed and
the fix on one line, not a traceback; ``--debug`` still shows the traceback.  This module
only *explains* exceptions (a pure mapping, tested on its own); ``cli.main`` prints the
line and exits with the code.  Anything not recognised here is a bug: exit 1 with the
exception's type and text and the hint to rerun with ``--debug``.
"""

from __future__ import annotations

import errno
import os
import ssl

from compass_pilot.errors import ConfigError, ServerError
from compass_pilot.exitcodes import ExitCode, ExitError

#: Top-level module name → the setup.py extra that installs it.
EXTRAS: dict[str, str] = {
    "radical": "saga",
    "pymysql": "mysql",
    "mpi4py": "mpi",
    "cryptography": "test",
}

_REFUSED_CODES = (40, 50, 60, 70, 80, 90)  # panda-server Protocol.py security codes


def install_hint(module: str) -> str:
    """``pip install 'compass-pilot[extra]'`` for a module an extra provides, else the module itself."""
    top = module.split(".")[0]
    extra = EXTRAS.get(top)
    return f"pip install 'compass-pilot[{extra}]'" if extra else f"pip install {top}"


def short_reason(exc: BaseException) -> str:
    """A network failure in a few words ("connection refused", "timed out", "HTTP 503").

    requests wraps urllib3 wraps the socket error; the innermost OSError says what a
    person needs to know, the wrapping repeats the URL three times.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    innermost_os: OSError | None = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return _ssl_reason(current)
        if isinstance(current, OSError) and current.errno:
            innermost_os = current
        nxt = current.__cause__ or current.__context__
        if nxt is None and current.args and isinstance(current.args[0], BaseException):
            nxt = current.args[0]
        if nxt is None:
            nxt = (
                getattr(current, "reason", None)
                if isinstance(getattr(current, "reason", None), BaseException)
                else None
            )
        current = nxt
    text = str(exc)
    if innermost_os is not None:
        return (innermost_os.strerror or os.strerror(innermost_os.errno or 0)).lower()
    for needle, reason in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "host name not known"),
        ("Temporary failure in name resolution", "host name not resolved"),
        ("timed out", "timed out"),
        ("Read timed out", "timed out"),
        ("WRONG_VERSION_NUMBER", "the server does not speak TLS (use http://)"),
        ("CERTIFICATE_VERIFY_FAILED", "server certificate not trusted (set panda.ca_dir)"),
        ("RemoteDisconnected", "the server closed the connection"),
    ):
        if needle in text:
            return reason
    return text.splitlines()[0][:120] if text else type(exc).__name__


def _ssl_reason(exc: ssl.SSLError) -> str:
    text = str(exc)
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return "the server does not speak TLS (use http:// in the URL)"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "server certificate not trusted (set panda.ca_dir or X509_CERT_DIR)"
    return f"TLS failure ({getattr(exc, 'reason', None) or text[:80]})"


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th … 11th, 12th, 13th, 21st."""
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th') }"


def explain(exc: BaseException) -> tuple[ExitCode, str] | None:
    """The exit code and one line for an expected failure; None for a bug."""
    from compass_pilot.credentials import ProxyError
    from compass_pilot.panda.tasks import TaskError

    if isinstance(exc, ExitError):
        return exc.code, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED_SIGINT, "interrupted"
    if isinstance(exc, ConfigError):
        return ExitCode.USAGE, f"configuration error: {exc}"
    if isinstance(exc, TaskError):
        return ExitCode.USAGE, f"task file: {exc}"
    if isinstance(exc, ProxyError):
        return (
            ExitCode.NO_VALID_PROXY,
            f"X509 proxy: {exc.diag} (create one with voms-proxy-init, or set panda.x509_proxy / X509_USER_PROXY)",
        )
    if isinstance(exc, ServerError):
        return server_failure(exc)
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return (
            ExitCode.MISSING_DEPENDENCY,
            f"python module '{exc.name}' is not installed: {install_hint(exc.name)}",
        )
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return ExitCode.USAGE, f"address already in use: {exc.strerror} (choose another --port, or 0 for any free port)"
    return None


def server_failure(exc: ServerError) -> tuple[ExitCode, str]:
    """Refused (authentication, 4xx, security StatusCodes) vs unreachable (everything else)."""
    status = exc.status or 0
    if 400 <= status < 500 or status in _REFUSED_CODES:
        return ExitCode.SERVER_REFUSED, f"PanDA server refused us: {exc}"
    what = "PanDA server unreachable" if exc.retriable else "cannot talk to the PanDA server"
    return ExitCode.SERVER_UNREACHABLE, f"{what}: {exc}"


def unexpected(exc: BaseException) -> str:
    """The one line for a bug: type, first line of the text, and how to see more."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"unexpected error: {type(exc).__name__}{': ' + text if text else ''} (run with --debug for the traceback)"
