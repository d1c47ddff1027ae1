"""The dispatcher's wire: HTTP routes for both PanDA dialects, on top of the store.

It speaks what a pilot uses of the real PanDA server, in both dialects, with the real
wire format (see compass_pilot/panda/client.py for the field lists and sources), so
our pilots and an unmodified PanDA pilot3 can both take its jobs:

- legacy ``/server/panda/getJob`` (nJobs → ``{"StatusCode":0,"jobs":[…]}``; without
  nJobs the job's fields at the top level, as pilot3 expects), ``updateJob``,
  ``updateJobsInBulk`` (``[true, ["<json>", …]]``), ``getStatus``;
- current ``/api/v1/pilot/acquire_jobs``, ``update_job``, ``update_jobs_bulk``,
  ``get_job_status`` with ``{"success", "message", "data"}`` answers;
- the operator's ``GET /`` page and ``/api/...`` JSON (rendered by ``page``), and
  ``/admin/submit`` · ``/admin/kill``.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from compass_pilot.panda import tasks as task_rules
from compass_pilot.panda.fields import wire_to_attr
from compass_pilot.panda.page import render_html
from compass_pilot.panda.store import JobStore, opt_int, submit_task

log = logging.getLogger("compass_pilot.panda.dispatcher")

MAX_BODY = 32 * 1024 * 1024  # the largest request body read

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
}
_LEGACY = {wire: attr for wire, attr in wire_to_attr("legacy").items() if attr in _STORED}
_V1 = {wire: attr for wire, attr in wire_to_attr("v1").items() if attr in _STORED}


def _map(fields: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {names[k]: v for k, v in fields.items() if k in names}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)

    # -- I/O -----------------------------------------------------------------------------
    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("request too large")
        raw = self.rfile.read(length) if length else b""
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if kind == "application/json":
            data = json.loads(raw.decode("utf-8") or "{}")
            if not isinstance(data, dict):
                raise ValueError("JSON body must be an object")
            return data
        return {k: v[-1] for k, v in parse_qs(raw.decode("utf-8"), keep_blank_values=True).items()}

    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        body = (
            payload
            if isinstance(payload, bytes)
            else (payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _legacy_reply(self, data: dict[str, Any] | list[Any]) -> None:
        if "application/json" in (self.headers.get("Accept") or "") or isinstance(data, list):
            self._send(200, data)
        else:
            from urllib.parse import urlencode

            self._send(
                200,
                urlencode({k: v if isinstance(v, str | int) else json.dumps(v) for k, v in data.items()}),
                "text/plain",
            )

    def _auth(self) -> str:
        if self.headers.get("Authorization", "").startswith("Bearer "):
            return "token"
        sock = self.connection
        if isinstance(sock, ssl.SSLSocket) and sock.getpeercert():
            return "x509"
        return "none"

    # -- routes --------------------------------------------------------------------------
    def do_GET(self) -> None:
        path = urlparse(self.path).path
        store = self.server.store
        if path == "/":
            self._send(200, render_html(store.summary()), "text/html; charset=utf-8")
        elif path == "/api/summary":
            self._send(200, store.summary())
        elif path.startswith("/api/jobs/"):
            try:
                panda_id = int(path.rsplit("/", 1)[1])
            except ValueError:
                self._send(400, {"error": "bad job id"})
                return
            jobs = store.query("SELECT * FROM jobs WHERE panda_id = ?", (panda_id,))
            if not jobs:
                self._send(404, {"error": "no such job"})
                return
            job = jobs[0]
            job["updates"] = store.query("SELECT * FROM updates WHERE panda_id = ? ORDER BY id", (panda_id,))
            self._send(200, job)
        else:
            self._send(404, {"error": f"no such path {path}"})

    def do_POST(self) -> None:
        path = urlparse(self.path).path
        try:
            fields = self._body()
        except (ValueError, UnicodeDecodeError) as exc:
            self._send(400, {"StatusCode": 30, "errorDialog": f"bad request body: {exc}"})
            return
        self.server.store.request_counts[path.rsplit("/", 1)[-1]] += 1
        try:
            if path.startswith("/server/panda/"):
                self._legacy(path.rsplit("/", 1)[1], fields)
            elif path.startswith("/api/v1/pilot/"):
                self._v1(path.rsplit("/", 1)[1], fields)
            elif path == "/admin/submit":
                task_id = submit_task(self.server.store.db_path, fields)
                self._send(200, {"task_id": task_id})
            elif path == "/admin/kill":
                ok = self.server.store.kill_job(int(fields.get("panda_id", 0)))
                self._send(200, {"ok": ok})
            else:
                self._send(404, {"error": f"no such path {path}"})
        except task_rules.TaskError as exc:
            self._send(400, {"error": str(exc)})
        except Exception as exc:  # a server bug must answer 500, not drop the connection
            log.exception("error serving %s", path)
            self._send(500, {"StatusCode": 30, "errorDialog": f"internal error: {type(exc).__name__}"})

    def _legacy(self, method: str, fields: dict[str, Any]) -> None:
        store = self.server.store
        if method == "getJob":
            bulk = "nJobs" in fields
            n = opt_int(fields.get("nJobs")) or 1
            jobs = store.get_jobs(n, str(fields.get("node", "")))
            if not jobs:
                self._legacy_reply({"StatusCode": 20, "errorDialog": "no jobs in PanDA"})
            elif bulk:
                self._legacy_reply({"StatusCode": 0, "jobs": jobs})
            else:
                self._legacy_reply({"StatusCode": 0, **jobs[0]})
        elif method == "updateJob":
            code, command, message = store.update(_map(fields, _LEGACY), "legacy", self._auth())
            answer: dict[str, Any] = {"StatusCode": code, "command": command or "NULL"}
            if message and code:
                answer["errorDialog"] = message
            self._legacy_reply(answer)
        elif method == "updateJobsInBulk":
            try:
                job_list = json.loads(fields.get("jobList", "[]"))
                assert isinstance(job_list, list)
            except (ValueError, AssertionError):
                self._send(200, [False, "jobList is not a JSON list"])
                return
            out = []
            for item in job_list:
                item = item if isinstance(item, dict) else {}
                code, command, _ = store.update(_map(item, _LEGACY), "legacy", self._auth())
                out.append(json.dumps({"StatusCode": code, "command": command or "NULL"}))
            self._send(200, [True, out])
        elif method == "getStatus":
            ids = [int(i) for i in str(fields.get("ids", "")).split(",") if i.strip().isdigit()]
            statuses = store.job_status(ids)
            self._legacy_reply(
                {
                    "StatusCode": 0,
                    "jobs": [s["status"] for s in statuses],
                    "attemptNrs": [s["attempt_number"] for s in statuses],
                }
            )
        else:
            self._send(404, {"StatusCode": 30, "errorDialog": f"unknown method {method}"})

    def _v1(self, method: str, fields: dict[str, Any]) -> None:
        store = self.server.store
        if method == "acquire_jobs":
            if not fields.get("site_name"):
                self._send(200, {"success": False, "message": "site_name is required", "data": None})
                return
            jobs = store.get_jobs(opt_int(fields.get("n_jobs")) or 1, str(fields.get("node", "")))
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
            data = [self._v1_update(item if isinstance(item, dict) else {}) for item in job_list]
            self._send(200, {"success": True, "message": "", "data": data})
        elif method == "get_job_status":
            raw = fields.get("job_ids", [])
            ids = raw if isinstance(raw, list) else [i for i in str(raw).split(",") if i]
            self._send(200, {"success": True, "message": "", "data": store.job_status([int(i) for i in ids])})
        else:
            self._send(404, {"success": False, "message": f"unknown method {method}", "data": None})

    def _v1_update(self, fields: dict[str, Any]) -> dict[str, Any]:
        code, command, message = self.server.store.update(_map(fields, _V1), "v1", self._auth())
        return {
            "success": code == 0,
            "message": message if code else "",
            "data": {"StatusCode": code, "command": command},
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    store: JobStore

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_sockets: set[Any] = set()
        self.sockets_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        """Cut kept-alive connections too: a stopped server must look dead to its clients."""
        import socket

        with self.sockets_lock:
            for sock in list(self.open_sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
