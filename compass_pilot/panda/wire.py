"""The dispatcher's wire: HTTP routes for both PanDA dialects, on top of the store.

It speaks what a pilot uses of the real PanDA server, in both dialects, with the real
wire format (panda-server ``server/panda.py`` for the request handling,
``jobdispatcher/JobDispatcher.py`` + ``Protocol.py`` for the legacy methods as they were
before their removal, ``api/v1/pilot_api.py`` for the current ones), so our pilots, an
unmodified PanDA pilot3 (3.7 sends forms, ≥ 3.10 gzip-compressed JSON) and Harvester can
all take its jobs:

- legacy ``/server/panda/<method>``: a JSON body is *always* gunzipped (with or without
  ``Content-Encoding``: the server never looked) and its True/False become "True"/"False";
  answers are JSON when the request accepts it, else ``key=value&…`` text.  ``getJob``
  (nJobs → ``{"StatusCode":0,"jobs":[…]}``, else the job's fields at the top level),
  ``updateJob``, ``updateJobsInBulk``, ``getStatus`` (always text:
  ``StatusCode=0&status=a+b&attemptNr=1+2``), ``updateWorkerPilotStatus``, and
  ``getProxy``/``getKeyPair`` answered as the server does when it has nothing to give
  (StatusCode 70);
- current ``/api/v1/pilot/<method>``: ``acquire_jobs``, ``update_job``,
  ``update_jobs_bulk``, ``get_job_status``, ``update_worker_status``,
  ``update_worker_node``, with ``{"success", "message", "data"}`` answers;
- any other method: 403 ``ERROR : method <name> is forbidden`` (text), as the server;
- the operator's ``GET /`` page and ``/api/...`` JSON (rendered by ``page``), and
  ``/admin/submit`` · ``/admin/kill``.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import socket
import ssl
import threading
import time
import zlib
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlencode, urlparse

from compass_pilot.panda import harvester_api, logcache, page
from compass_pilot.panda import tasks as task_rules
from compass_pilot.panda.auth import Authenticator, Identity, Refusal
from compass_pilot.panda.constants import MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT
from compass_pilot.panda.fields import wire_to_attr
from compass_pilot.panda.httpcore import LeanHandler
from compass_pilot.panda.store import GROUP_COMMIT, VALID_STATES, JobStore, opt_int, submit_task

log = logging.getLogger("compass_pilot.panda.dispatcher")

MAX_BODY = 32 * 1024 * 1024  # the largest request body read
REQUEST_TIMEOUT = 30.0  # seconds a connection may stall (TLS handshake, headers, body): slowloris bound
#: What an over-limit connection is told before it is closed (no thread, no parsing).
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 40\r\nConnection: close\r\n\r\ntoo many connections: retry in 5 seconds\n"
)

# the store reads these attributes of an update; names per dialect come from panda/fields.py
_STORED = {
    "panda_id",
    "state",
    "attempt_nr",
    "pilot_error_code",
    "pilot_error_diag",
    "n_events",
    "start_time",
    "end_time",
    "output_report",
    "node",
    "pilot_id",
    "meta_data",
}
_LEGACY = {wire: attr for wire, attr in wire_to_attr("legacy").items() if attr in _STORED}
_V1 = {wire: attr for wire, attr in wire_to_attr("v1").items() if attr in _STORED}


#: the legacy methods a pilot may call; anything else is "forbidden", as on the real server
LEGACY_METHODS = {
    "getJob",
    "updateJob",
    "updateJobsInBulk",
    "getStatus",
    "updateWorkerPilotStatus",
    "getProxy",
    "getKeyPair",
}
V1_METHODS = {
    "acquire_jobs",
    "update_job",
    "update_jobs_bulk",
    "get_job_status",
    "update_worker_status",
    "update_worker_node",
}
WORKER_STATES = ("started", "finished")
SC_PERMS = 70  # Protocol.SC_Perms: what getProxy / getKeyPair answer when nothing is granted


class _BadBody(ValueError):
    """A body the real server could not parse either (it answers 500 with the reason)."""


class _BadLength(ValueError):
    """A Content-Length we will not read by: the HTTP status says which (400, 411, 413)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _map(fields: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {names[k]: v for k, v in fields.items() if k in names}


def _text(data: dict[str, Any]) -> str:
    """``Protocol.Response.encode(False)``: urlencode, non-strings as Python prints them."""
    return urlencode({k: v if isinstance(v, str | int | float) else json.dumps(v) for k, v in data.items()})


class _Handler(LeanHandler):
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # StreamRequestHandler sets it on the socket
        super().setup()

    def log_message(self, fmt: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):  # formatted only when it is written
            log.debug("%s %s", self.address_string(), fmt % args)

    # -- who is asking -------------------------------------------------------------------
    def _identity(self, need: str, legacy: bool) -> Identity | None:
        """The caller if it may do what ``need`` ("pilot" / "admin") asks; else answers the refusal."""
        sock = self.connection
        cert = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
        auth: Authenticator = self.server.auth
        found = auth.identify(self.headers, cert)
        refusal = found if isinstance(found, Refusal) else auth.allows(found, need)
        if refusal is None:
            return found  # type: ignore[return-value]
        log.warning("refused %s %s from %s: %s", self.command, self.path[:200], self.client_address[0], refusal.reason)
        self.close_connection = True
        self._drain()
        if legacy:
            self._send(refusal.http_status, {"StatusCode": refusal.status_code, "errorDialog": refusal.reason})
        else:
            self._send(refusal.http_status, {"success": False, "message": refusal.reason, "data": None})
        return None

    def _drain(self, limit: int = 64 * 1024) -> None:
        """Read a small refused body so the client sees our answer (closing on unread data resets)."""
        raw = (self.headers.get("Content-Length") or "").strip()
        if raw.isdigit() and int(raw) <= limit:
            try:
                self.rfile.read(int(raw))
            except OSError:
                pass

    def _content_length(self) -> int:
        """The body's length, refused before any read: missing 411, not a count 400, too big 413."""
        if self.headers.get("Transfer-Encoding"):
            raise _BadLength(411, "chunked bodies are not accepted: send Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise _BadLength(411, "Content-Length required")
        if not raw.strip().isdigit():
            raise _BadLength(400, f"bad Content-Length {raw[:40]!r}")
        length = int(raw)
        if length > MAX_BODY:
            raise _BadLength(413, f"request body larger than {MAX_BODY} bytes")
        return length

    # -- I/O -----------------------------------------------------------------------------
    def _body(self, legacy: bool) -> dict[str, Any]:
        """The request's parameters, decoded the way panda-server's ``parse_parameters`` does."""
        raw = self.rfile.read(self._content_length())
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if kind != "application/json":
            return form_fields(raw)
        if legacy or (self.headers.get("Content-Encoding") or "").lower() == "gzip":
            # legacy: "decompress the body, this was done without checking the content encoding"
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error) as exc:
                raise _BadBody(str(exc)) from None
        try:
            data = json.loads(raw.decode("utf-8") or "{}")
        except ValueError as exc:
            raise _BadBody(f"received invalid JSON : {exc}") from None
        if not isinstance(data, dict):
            raise _BadBody("received invalid JSON : not an object")
        if legacy:  # the legacy API hands True/False on as the strings its forms would carry
            data = {k: ("True" if v is True else "False" if v is False else v) for k, v in data.items()}
        return data

    def _upload_log(self) -> None:
        """Harvester's worker log upload (``file_server/upload_jedi_log``): stored, its URL answered."""
        try:
            raw = self.rfile.read(self._content_length())
        except _BadLength as exc:
            self.close_connection = True
            self._send(exc.status, {"success": False, "message": str(exc), "data": None})
            return
        directory = logcache.cache_dir(self.server.store.db_path)
        try:
            if directory is None:
                raise logcache.UploadError("this dispatcher keeps no files (in-memory database)")
            name, content = logcache.parse_upload(raw, self.headers.get("Content-Type") or "")
            logcache.store(directory, name, content)
        except logcache.UploadError as exc:
            self._send(200, {"success": False, "message": str(exc), "data": None})
            return
        except OSError as exc:
            message = f"failed to write log with {type(exc).__name__}"
            self._send(200, {"success": False, "message": message, "data": None})
            return
        scheme = "https" if self.server.tls is not None else "http"
        host = self.headers.get("Host") or ""
        if not _HOST.match(host):  # the client's own Host header, echoed only if it is a plain host[:port]
            host = "{}:{}".format(*self.server.server_address[:2])
        url = f"{scheme}://{host}/cache/{logcache.SUBDIR}/{name}"
        self._send(200, {"success": True, "message": "", "data": url})

    def _forbidden(self, method: str) -> None:
        self._send(403, f"ERROR : method {method} is forbidden", "text/plain")

    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        body = (
            payload
            if isinstance(payload, bytes)
            else (payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
        )
        # headers and body in ONE write (what end_headers + write would send as two): a
        # small second segment would wait for the client's delayed ACK (Nagle), ~40 ms
        self.send_answer(status, body, content_type)

    def _accepts_json(self) -> bool:
        return "application/json" in (self.headers.get("Accept") or "")

    def _legacy_reply(self, data: dict[str, Any] | list[Any]) -> None:
        if self._accepts_json() or isinstance(data, list):
            self._send(200, data)
        else:
            self._send(200, _text(data), "text/plain")

    # -- routes --------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802  (http.server names the handlers so)
        parsed = urlparse(self.path)
        path = parsed.path
        store = self.server.store
        identity = self._identity("pilot", path.startswith("/server/panda/"))
        if identity is None:
            return
        self.identity = identity
        if path == "/api/summary":
            self._send(200, store.summary())
        elif path == "/api/v1/pilot/get_job_status":
            query = parse_qs(parsed.query, keep_blank_values=True)
            self._v1("get_job_status", {k: v if len(v) > 1 else v[0] for k, v in query.items()})
        elif path.startswith("/api/v1/harvester/") and path.rsplit("/", 1)[-1] in harvester_api.GET_METHODS:
            query = parse_qs(parsed.query, keep_blank_values=True)
            fields = {k: v if len(v) > 1 else v[0] for k, v in query.items()}
            self._send(200, harvester_api.handle(store, path.rsplit("/", 1)[-1], fields, identity.name))
        elif path.startswith(f"/cache/{logcache.SUBDIR}/"):
            content = logcache.read(logcache.cache_dir(store.db_path), path.rsplit("/", 1)[-1])
            if content is None:
                self._send(404, {"error": f"no such log {path}"})
            else:
                self._send(200, content, "text/plain; charset=utf-8")
        elif path.startswith("/api/v1/") or path.startswith("/server/panda/"):
            self._forbidden(path.rsplit("/", 1)[-1])
        else:
            answer = page.handle_get(store, path, parsed.query)  # the operator's pages, /metrics, /api/jobs/N
            if answer is None:
                self._send(404, {"error": f"no such path {path}"})
            else:
                status, content_type, body = answer
                self._send(status, body, content_type)

    def do_POST(self) -> None:  # noqa: N802
        path = urlparse(self.path).path
        legacy = path.startswith("/server/panda/")
        method = path.rsplit("/", 1)[-1]
        harvester = path.startswith("/api/v1/harvester/")
        upload = path == "/api/v1/file_server/upload_jedi_log"
        if (
            (legacy and method not in LEGACY_METHODS)
            or (harvester and method not in harvester_api.POST_METHODS)
            or (path.startswith("/api/v1/") and not (harvester or upload) and method not in V1_METHODS)
        ):
            self._forbidden(method)  # checked before the body is read, as the server does
            return
        identity = self._identity("admin" if path.startswith("/admin/") else "pilot", legacy)
        if identity is None:
            return
        self.identity = identity
        if upload:
            self._upload_log()
            return
        try:
            fields = self._body(legacy)
        except _BadLength as exc:
            self.close_connection = True
            self._send(exc.status, {"StatusCode": 30, "errorDialog": str(exc)})
            return
        except _BadBody as exc:
            self._send(500, f"ERROR : {exc}", "text/plain")
            return
        except (ValueError, UnicodeDecodeError) as exc:
            self._send(400, {"StatusCode": 30, "errorDialog": f"bad request body: {exc}"})
            return
        self.server.store.request_counts[method] += 1
        started = time.perf_counter()
        try:
            if legacy:
                self._legacy(method, fields)
            elif path.startswith("/api/v1/pilot/"):
                self._v1(method, fields)
            elif harvester:
                self._send(200, harvester_api.handle(self.server.store, method, fields, identity.name))
            elif path == "/admin/submit":
                task_id = submit_task(self.server.store.db_path, fields)
                self._send(200, {"task_id": task_id})
            elif path == "/admin/kill":
                ok = self.server.store.kill_job(int(fields.get("panda_id", 0)))
                self._send(200, {"ok": ok})
            elif path.startswith("/api/v1/"):
                self._forbidden(method)
            else:
                self._send(404, {"error": f"no such path {path}"})
        except task_rules.TaskError as exc:
            self._send(400, {"error": str(exc)})
        except ValueError as exc:  # a parameter that is not what it should be (an integer, …): the caller's fault
            self._send(400, {"StatusCode": 30, "errorDialog": f"bad parameter: {str(exc)[:200]}"})
        except TypeError as exc:  # a missing required parameter: the server's method call fails the same way
            self._send(500, str(exc), "text/plain")
        except Exception as exc:  # a server bug must answer 500, not drop the connection
            log.exception("error serving %s", path)
            self._send(500, {"StatusCode": 30, "errorDialog": f"internal error: {type(exc).__name__}"})
        finally:
            page.request_stats(self.server.store).observe(method, time.perf_counter() - started)  # for /metrics

    def _legacy(self, method: str, fields: dict[str, Any]) -> None:
        store = self.server.store
        if method == "getJob":
            bulk = "nJobs" in fields
            n = opt_int(fields.get("nJobs")) or 1
            jobs = store.get_jobs(n, str(fields.get("node", "")), owner=self.identity.name)
            if not jobs:
                self._legacy_reply({"StatusCode": 20, "errorDialog": "no jobs in PanDA"})
            elif bulk:
                self._legacy_reply({"StatusCode": 0, "jobs": jobs})
            else:
                self._legacy_reply(jobs[0])
        elif method == "updateJob":
            self._legacy_reply(self._legacy_update(fields))
        elif method == "updateJobsInBulk":
            try:
                job_list = json.loads(fields.get("jobList", "[]"))
                assert isinstance(job_list, list)
            except (ValueError, AssertionError, TypeError) as exc:
                self._send(200, [False, f"updateJobsInBulk failed with {type(exc).__name__} {exc}"])
                return
            answers: list[dict[str, Any]] = []
            for start in range(0, len(job_list), GROUP_COMMIT):  # a few items per write transaction
                with store.group():
                    answers.extend(
                        self._legacy_update(item if isinstance(item, dict) else {})
                        for item in job_list[start : start + GROUP_COMMIT]
                    )
            # each item is what updateJob returns: {"type": "json", "content": "<json>"} or k=v text
            as_json = self._accepts_json()
            out = [{"type": "json", "content": json.dumps(a)} if as_json else _text(a) for a in answers]
            self._send(200, [True, out])
        elif method == "getStatus":
            # JobDispatcher.getStatus: ids split on whitespace, '+'-joined answers, always k=v text
            ids = str(_required(fields, "ids")).split()
            by_id = {s["job_id"]: s for s in store.job_status([int(i) for i in ids if i.isdigit()])}
            found = [by_id.get(int(i)) if i.isdigit() else None for i in ids]
            status = "+".join(s["status"] if s and s["attempt_number"] else "notfound" for s in found)
            attempts = "+".join(str(s["attempt_number"]) if s else "0" for s in found)
            self._send(200, _text({"StatusCode": 0, "status": status, "attemptNr": attempts}), "text/plain")
        elif method == "updateWorkerPilotStatus":
            for key in ("site", "workerID", "harvesterID", "status"):
                _required(fields, key)
            if fields["status"] not in WORKER_STATES:
                self._send(200, f"Invalid worker state. The worker state has to be in {WORKER_STATES}", "text/plain")
                return
            store.update_worker(
                str(fields["harvesterID"]), str(fields["workerID"]), str(fields["status"]), fields.get("node_id")
            )
            self._legacy_reply({"StatusCode": 0})
        elif method in ("getProxy", "getKeyPair"):
            if method == "getKeyPair":
                _required(fields, "publicKeyName")
                _required(fields, "privateKeyName")
            dn = self._peer_dn()
            diag = (
                "Cannot extract DN from proxy. not HTTPS?"
                if dn is None
                else f"failed since '{dn}' is not authorized to get a {'proxy' if method == 'getProxy' else 'key pair'}"
            )
            answer = {"StatusCode": SC_PERMS, "errorDialog": diag}
            if method == "getProxy":  # get_proxy always answers JSON
                self._send(200, answer)
            else:
                self._legacy_reply(answer)

    def _legacy_update(self, fields: dict[str, Any]) -> dict[str, Any]:
        """One legacy updateJob; returns the answer's fields (``JobDispatcher.updateJob``)."""
        if str(fields.get("jobId")) == "NULL":  # the server's "aborting message"
            return {"StatusCode": 0}
        if fields.get("state") not in VALID_STATES:
            return {"StatusCode": 0}  # an invalid state is logged and acknowledged, nothing else
        code, command, message = self.server.store.update(
            _map(fields, _LEGACY), "legacy", self.identity.label, identity=self.identity.name
        )
        answer: dict[str, Any] = {"StatusCode": code, "command": command or "NULL"}
        if message and code:
            answer["errorDialog"] = message
        return answer

    def _peer_dn(self) -> str | None:
        """The client certificate's subject as an OpenSSL one-line DN, or None without one."""
        sock = self.connection
        cert = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
        if not cert:
            return None
        return "".join(f"/{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)

    def _v1(self, method: str, fields: dict[str, Any]) -> None:
        store = self.server.store
        if method == "acquire_jobs":
            if not fields.get("site_name"):
                self._send(200, {"success": False, "message": "site_name is required", "data": None})
                return
            jobs = store.get_jobs(
                opt_int(fields.get("n_jobs")) or 1, str(fields.get("node", "")), owner=self.identity.name
            )
            if not jobs:
                self._send(200, {"success": False, "message": "No jobs in PanDA", "data": None})
            else:
                self._send(200, {"success": True, "message": "", "data": {"StatusCode": 0, "jobs": jobs}})
        elif method == "update_job":
            self._send(200, self._v1_update(fields))
        elif method == "update_jobs_bulk":
            job_list = fields.get("job_list")
            if isinstance(job_list, str):
                try:
                    job_list = json.loads(job_list)
                except ValueError:
                    job_list = None
            if not isinstance(job_list, list):
                self._send(200, {"success": False, "message": "job_list must be a list", "data": []})
                return
            items = [_map(item if isinstance(item, dict) else {}, _V1) for item in job_list]
            data = [
                _v1_answer(*answer)
                for answer in store.update_many(items, "v1", self.identity.label, self.identity.name)
            ]
            self._send(200, {"success": True, "message": "", "data": data})
        elif method == "get_job_status":
            # as the server's GET parser (api/v1/common.py): a repeated key is a list, a single
            # value a one-element list, each element cast by int(float(x)) — "1,2" is a type error
            raw = fields.get("job_ids", [])
            try:
                ids = [int(float(i)) for i in (raw if isinstance(raw, list) else [raw])]
            except (TypeError, ValueError):
                message = f"Type error: 'job_ids' with value '{raw}' could not be casted to type list"
                self._send(200, {"success": False, "message": message, "data": None})
                return
            self._send(200, {"success": True, "message": "", "data": store.job_status(ids)})
        elif method == "update_worker_status":
            missing = [k for k in ("worker_id", "harvester_id", "status") if k not in fields]
            if missing:
                self._send(200, _v1_argument_error("update_worker_status", missing))
            elif fields["status"] not in WORKER_STATES:
                message = f"Invalid worker state. The worker state has to be in {WORKER_STATES}"
                self._send(200, {"success": False, "message": message, "data": None})
            else:
                store.update_worker(
                    str(fields["harvester_id"]), str(fields["worker_id"]), str(fields["status"]), fields.get("node_id")
                )
                self._send(200, {"success": True, "message": "", "data": None})
        elif method == "update_worker_node":
            missing = [k for k in ("site", "host_name", "cpu_model") if k not in fields]
            if missing:
                self._send(200, _v1_argument_error("update_worker_node", missing))
                return
            extra = {k: v for k, v in fields.items() if k not in ("site", "host_name", "cpu_model", "panda_queue")}
            store.update_worker_node(
                str(fields["site"]),
                str(fields["host_name"]),
                fields.get("panda_queue"),
                str(fields["cpu_model"]),
                json.dumps(extra, sort_keys=True),
            )
            self._send(200, {"success": True, "message": "", "data": None})

    def _v1_update(self, fields: dict[str, Any]) -> dict[str, Any]:
        return _v1_answer(
            *self.server.store.update(_map(fields, _V1), "v1", self.identity.label, identity=self.identity.name)
        )


def _v1_answer(code: int, command: str | None, message: str) -> dict[str, Any]:
    return {"success": code == 0, "message": message if code else "", "data": {"StatusCode": code, "command": command}}


_ESCAPE = re.compile(rb"%[0-9A-Fa-f]{2}")
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:]{2,39}\](:[0-9]{1,5})?$")


def _unquote_plus(raw: bytes) -> str:
    """``urllib.parse.unquote_plus``, done by C string replaces instead of a Python loop per escape.

    A bulk update's ``jobList`` is a form-encoded JSON text where every quote, colon and
    comma is an escape: urllib decodes 512 jobs' worth in ~170 ms, this in a few.  Each
    distinct escape is replaced at once; ``%25`` goes last, so a ``%`` it yields is never
    read as the start of another escape (and a body with a stray ``%`` goes to urllib).
    """
    data = raw.replace(b"+", b" ")
    escapes = _ESCAPE.findall(data)
    if len(escapes) != data.count(b"%"):  # a stray "%": urllib's reading of it, whatever it is
        return unquote_plus(raw.decode("utf-8", "replace"))
    for escape in sorted(set(escapes), key=lambda e: e.upper() == b"%25"):
        data = data.replace(escape, bytes([int(escape[1:], 16)]))
    return data.decode("utf-8", "replace")


def form_fields(raw: bytes) -> dict[str, str]:
    """A form body as ``{name: last value}`` — what ``parse_qs(…, keep_blank_values=True)`` gives."""
    fields = {}
    for pair in raw.split(b"&"):
        if pair:
            name, _, value = pair.partition(b"=")
            fields[_unquote_plus(name)] = _unquote_plus(value)
    return fields


def _required(fields: dict[str, Any], key: str) -> Any:
    """A parameter the server's method has no default for (missing → TypeError → 500, as there)."""
    if key not in fields:
        raise TypeError(f"missing 1 required positional argument: '{key}'")
    return fields[key]


def _v1_argument_error(method: str, missing: list[str]) -> dict[str, Any]:
    """``request_validation``'s answer to a call missing arguments."""
    names = " and ".join(repr(k) for k in missing)
    message = f"Argument error: {method}() missing {len(missing)} required positional argument(s): {names}"
    return {"success": False, "message": message, "data": None}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    store: JobStore
    auth: Authenticator = Authenticator()
    request_timeout: float = REQUEST_TIMEOUT
    tls: ssl.SSLContext | None = None  # set: each connection's handshake runs in its own thread

    max_connections: int = MAX_CONNECTIONS
    max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_sockets: set[Any] = set()
        self.sockets_lock = threading.Lock()
        self.connections = 0  # connections holding a thread now
        self.per_client: dict[str, int] = {}  # client address → its connections holding a thread
        self.refused_busy = 0  # connections turned away by the limits (for logs and tests)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS handshake here, in the connection's thread and under its timeout.

        Wrapping the listening socket would handshake inside ``accept()``, on the one
        thread that serves every client: a peer that opens a connection and says nothing
        would stop the dispatcher for everyone.
        """
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(self.request_timeout)
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        with self.sockets_lock:  # the raw socket is detached now: track the TLS one instead
            self.open_sockets.discard(request)
            self.open_sockets.add(wrapped)
        try:
            super().finish_request(wrapped, client_address)
        finally:
            with self.sockets_lock:
                self.open_sockets.discard(wrapped)
            wrapped.close()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to a thread, unless the limits say no.

        Timeouts alone bound how long a connection lives, not how many there are: without
        a cap, a client opening thousands of idle (or TLS-silent) connections would make
        as many threads.  Over the cap the connection is answered 503 from the accept
        thread (a fresh socket's send buffer is empty: this never blocks) and closed.
        """
        ip = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        with self.sockets_lock:
            mine = self.per_client.get(ip, 0)
            busy = self.connections >= self.max_connections or mine >= self.max_connections_per_client
            if not busy:
                self.connections += 1
                self.per_client[ip] = mine + 1
                self.open_sockets.add(request)
            else:
                self.refused_busy += 1
                refused = self.refused_busy
        if busy:
            if refused in (1, 10, 100) or refused % 1000 == 0:
                log.warning("connection limits reached (%d refused so far; last from %s)", refused, ip)
            try:
                request.setblocking(False)
                request.send(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:  # answers go out at once, not held back for the client's ACK (Nagle)
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread was started: give the slot back
            self._release(ip)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self._release(client_address[0] if isinstance(client_address, tuple) else str(client_address))

    def _release(self, ip: str) -> None:
        with self.sockets_lock:
            self.connections -= 1
            left = self.per_client.get(ip, 1) - 1
            if left > 0:
                self.per_client[ip] = left
            else:
                self.per_client.pop(ip, None)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        """Cut kept-alive connections too: a stopped server must look dead to its clients."""
        with self.sockets_lock:
            for sock in list(self.open_sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
