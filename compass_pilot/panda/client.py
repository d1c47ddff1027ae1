"""PanDA HTTP client: get_jobs(n), update_job, update_jobs — in both of the server's dialects.

Wire formats matched against the public sources:

- ``legacy`` — PanDA Pilot 3.x (``pilot/util/https.py``, ``pilot/control/job.py``) and
  Harvester ≤ 2023: ``application/x-www-form-urlencoded`` POST to
  ``<url>/server/panda/<method>`` with ``Accept: application/json``.  ``getJob`` takes
  siteName, computingElement, prodSourceLabel, node, mem, diskSpace, cpu, workingGroup
  and ``nJobs`` (bulk → ``{"StatusCode":0,"jobs":[…]}``, 20 = no jobs);
  ``updateJob`` takes jobId, state, attemptNr, timestamp, siteName, node, schedulerID,
  pilotID, startTime, endTime, coreCount, batchID, nEvents, cpuConsumptionTime,
  cpuConsumptionUnit, maxRSS, jobMetrics, pilotErrorCode, pilotErrorDiag, transExitCode,
  exeErrorCode, exeErrorDiag, pilotTiming and ``xml`` (the JSON file report) and answers
  ``{"StatusCode":0,"command":"NULL"}``; ``updateJobsInBulk`` takes ``jobList`` (a JSON
  list of those dicts) and answers ``[true, ["<json answer>", …]]``.  StatusCodes follow
  panda-server ``jobdispatcher/Protocol.py``: 0 ok, 10 timeout, 20 no jobs, 30 failed,
  40–70 security (not retried).
- ``v1`` — panda-server ``pandaserver/api/v1/pilot_api.py``: POST
  ``<url>/api/v1/pilot/acquire_jobs`` (site_name, n_jobs, prod_source_label, node,
  computing_element, memory, disk_space, resource_type), ``update_job`` (job_id,
  job_status, attempt_nr, n_events, job_output_report, …) and ``update_jobs_bulk``
  (job_list); JSON bodies, answers ``{"success", "message", "data"}`` where
  acquire_jobs' data is ``{"StatusCode":0,"jobs":[…]}`` and a job update's data is
  ``{"StatusCode":0,"command":…}``.

Auth: an X509 proxy is the client certificate *and* key (with a CA directory to verify
the server); a bearer token is sent as ``Authorization: Bearer …`` with ``Origin``.
Neither is ever logged.  Retries with exponential backoff and jitter on connection
errors, timeouts and 5xx; never on 4xx.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests

from compass_pilot.config import PandaSection, SiteSection, expand
from compass_pilot.errors import ServerError
from compass_pilot.failures import ordinal, short_reason
from compass_pilot.job import JobReport
from compass_pilot.panda import transport
from compass_pilot.panda.auth import is_loopback
from compass_pilot.panda.fields import CPU_UNIT, DIALECT_COLUMN, FILE_REPORT, META_DATA, UPDATE_FIELDS

log = logging.getLogger(__name__)

SECURITY_CODES = (40, 50, 60, 70, 80, 90)


@dataclass
class UpdateAnswer:
    """The server's answer to one job update."""

    ok: bool
    command: str | None
    status_code: int
    message: str = ""


def _command(value: Any) -> str | None:
    if value in (None, "", "NULL", "None"):
        return None
    return str(value)


def update_fields(report: JobReport, dialect: str) -> dict[str, Any]:
    """A JobReport as one dialect's update parameters (empty values left out)."""
    column = DIALECT_COLUMN[dialect]
    fields: dict[str, Any] = {row[column]: getattr(report, row[0]) for row in UPDATE_FIELDS}
    if report.cpu_consumption_time is not None:
        fields[CPU_UNIT[column]] = "s"
    if dialect == "legacy":  # pilot3 stamps every update; the v1 API has no such parameter
        fields["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(report.timestamp))
    if report.output_files:
        fields[FILE_REPORT[column]] = json.dumps(report.file_report())
        job_report = report.job_report()
        if job_report is not None:  # per-file event counts: the server reads them only here
            fields[META_DATA[column]] = json.dumps(job_report)
    return {k: v for k, v in fields.items() if v not in (None, "")}


def make_pilot_id(kind: str, version_tag: str = "PR") -> str:
    """The ``pilotID`` of every update, in pilot3's shape ``<id>|<version tag>|<pilot version>``.

    ``<id>`` is the factory's ``GTAG`` (the pilot log's URL, what pilot3 reports) when set,
    else ``compass-<kind>-<host>-<pid>``, so an operator can find the pilot behind a job.
    """
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        version = dist_version("compass-pilot")
    except PackageNotFoundError:
        version = "unknown"
    ident = os.environ.get("GTAG") or f"compass-{kind}-{socket.gethostname()}-{os.getpid()}"
    return f"{ident}|{version_tag}|compass-pilot {version}"


class _NoDelayAdapter(requests.adapters.HTTPAdapter):
    """Every connection with TCP_NODELAY: a request's small last segment must not wait for
    the server's delayed ACK (Nagle, ~40 ms a request).  urllib3 sets it by default today;
    this keeps it set whatever its defaults become."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        from urllib3.connection import HTTPConnection

        options = list(kwargs.get("socket_options") or HTTPConnection.default_socket_options)
        if (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1) not in options:
            options.append((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
        kwargs["socket_options"] = options
        super().init_poolmanager(*args, **kwargs)
        # headers and body in one write (panda/transport.py)
        self.poolmanager.pool_classes_by_scheme = dict(transport.POOLS_BY_SCHEME)


def _read_token(config: PandaSection) -> str | None:
    """The bearer token: the configured file, else OIDC_AUTH_TOKEN / PANDA_AUTH_TOKEN (a file or the token)."""
    candidates = [expand(config.token_file)] if config.token_file else []
    for var in ("OIDC_AUTH_TOKEN", "PANDA_AUTH_TOKEN"):
        value = os.environ.get(var)
        if value:
            candidates.append(value)
    for candidate in candidates:
        if os.path.isfile(candidate):
            with open(candidate, encoding="utf-8") as handle:
                return handle.read().strip()
        if candidate is not config.token_file and "/" not in candidate:
            return candidate.strip()
    return None


class PandaClient:
    """One pilot's or daemon's connection to PanDA (keeps one HTTP session)."""

    def __init__(self, panda: PandaSection, site: SiteSection, *, node: str = "", pilot_id: str = "") -> None:
        self.panda = panda
        self.site = site
        self.node = node or socket.gethostname()
        self.pilot_id = pilot_id
        self.session = requests.Session()
        for prefix in ("http://", "https://"):
            self.session.mount(prefix, _NoDelayAdapter())
        self._verify: bool | str = True
        self.session.headers.update({"Accept": "application/json", "User-Agent": "compass-pilot/0.1"})
        proxy = expand(panda.x509_proxy) if panda.x509_proxy else os.environ.get("X509_USER_PROXY", "")
        if proxy and os.path.isfile(proxy):
            self.session.cert = (proxy, proxy)
        elif proxy:  # only reached when the preflight's proxy check is off (pilot3 -t): tokens may do instead
            log.debug("X509 proxy %s not found: no client certificate", proxy)
        if panda.url.startswith("https"):
            ca_dir = expand(panda.ca_dir) if panda.ca_dir else os.environ.get("X509_CERT_DIR", "")
            if not ca_dir and os.path.isdir("/etc/grid-security/certificates"):
                ca_dir = "/etc/grid-security/certificates"
            # passed on every request: requests lets REQUESTS_CA_BUNDLE override Session.verify
            self._verify = (ca_dir or True) if panda.verify else False
        token = _read_token(panda)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
            host = urlparse(panda.url).hostname or ""
            if panda.url.startswith("http://") and not is_loopback(host):
                log.warning("sending a bearer token to %s over plain http: anyone on the path can reuse it", host)
            origin = panda.origin or os.environ.get("PANDA_AUTH_ORIGIN", "")
            if origin:
                self.session.headers["Origin"] = origin
        self._pin_environment()
        self._templates: dict[str, requests.PreparedRequest] = {}  # URL → its request, prepared once
        self.requests_made = 0

    def _pin_environment(self) -> None:
        """Read the environment's proxies, CA bundle and netrc entry for the server once, here.

        With ``trust_env`` requests reads them again on every request: it walks
        ``os.environ`` twice (proxies, then the no_proxy check) and stats ``~/.netrc`` —
        a third of a small request's client CPU, paid on every heartbeat.  Every request
        goes to the one server URL and a pilot's environment is set before it starts, so
        reading it once gives the same proxies, the same CA bundle (``REQUESTS_CA_BUNDLE``
        / ``CURL_CA_BUNDLE`` still only where no CA directory is configured) and the same
        netrc credentials.
        """
        url = self.panda.url
        self.session.proxies.update(requests.utils.get_environ_proxies(url))
        netrc_auth = requests.utils.get_netrc_auth(url)
        if netrc_auth:
            self.session.auth = netrc_auth
        if self._verify is True:
            self._verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self.session.trust_env = False

    def close(self) -> None:
        self.session.close()

    # -- transport -----------------------------------------------------------------------
    def _url(self, method: str) -> str:
        base = self.panda.url.rstrip("/")
        if self.panda.dialect == "v1":
            return f"{base}/api/v1/pilot/{method}"
        return f"{base}/server/panda/{method}"

    def _post(self, method: str, fields: dict[str, Any]) -> Any:
        """POST with retries; returns the decoded JSON answer or raises ServerError."""
        url = self._url(method)
        attempts = max(1, self.panda.retries)
        delay = self.panda.backoff
        last_error = ""
        for attempt in range(1, attempts + 1):
            self.requests_made += 1
            try:
                response = self._send_post(url, fields)
                body = self._read_body(response, method)
            except requests.exceptions.SSLError as exc:
                raise ServerError(f"{method}: {url}: {short_reason(exc)}", retriable=False) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                last_error = short_reason(exc)
            else:
                if response.status_code >= 500:
                    last_error = f"HTTP {response.status_code}"
                elif response.status_code >= 400:
                    raise ServerError(
                        f"{method}: HTTP {response.status_code} from {url}: {body[:200]!r}",
                        status=response.status_code,
                        retriable=False,
                    )
                else:
                    return self._decode(body, method)
            if attempt < attempts:
                sleep = min(delay * (2 ** (attempt - 1)), self.panda.backoff_max) * random.uniform(0.5, 1.5)
                # one short line per retry ("getJob: 3rd retry in 8 s: connection refused"), not the wrapped URL thrice
                log.warning("%s: %s retry in %.0f s: %s", method, ordinal(attempt), sleep, last_error)
                time.sleep(sleep)
        raise ServerError(f"{method}: {url} unreachable after {attempts} attempts: {last_error}")

    def _send_post(self, url: str, fields: dict[str, Any]) -> requests.Response:
        """POST ``fields`` (JSON for v1, a form for legacy) on the session's connection.

        The request is what ``session.post(url, json=… / data=…)`` sends, byte for byte,
        without requests re-merging the session's headers, auth, hooks and settings on
        every call (its ``prepare_request``: a quarter of a heartbeat's client CPU).  The
        headers are prepared once per URL by requests itself; each call adds its body.
        With cookies in the session (a server or load balancer that sets them) every
        request goes the full way, so they are sent as requests would.
        """
        if self.panda.dialect == "v1":
            body = json.dumps(fields, allow_nan=False).encode("utf-8")
            content_type = "application/json"
        else:
            body = requests.models.RequestEncodingMixin._encode_params(fields).encode("utf-8")
            content_type = "application/x-www-form-urlencoded"
        settings = {"timeout": self.panda.timeout, "stream": True, "verify": self._verify}
        if self.session.cookies:
            return self.session.post(url, data=body, headers={"Content-Type": content_type}, **settings)
        template = self._templates.get(url)
        if template is None:
            template = self.session.prepare_request(requests.Request("POST", url, data=b"x"))
            template.headers.pop("Content-Type", None)
            self._templates[url] = template
        prepared = requests.PreparedRequest()
        prepared.method, prepared.url, prepared.hooks = template.method, template.url, template.hooks
        prepared.headers = template.headers.copy()
        prepared.headers["Content-Type"] = content_type
        prepared.headers["Content-Length"] = str(len(body))
        prepared.body = body
        return self.session.send(prepared, proxies=self.session.proxies, cert=self.session.cert, **settings)

    def _read_body(self, response: requests.Response, method: str) -> bytes:
        limit = self.panda.max_response_bytes
        chunks = []
        size = 0
        for chunk in response.iter_content(65536):
            size += len(chunk)
            if size > limit:
                response.close()
                raise ServerError(f"{method}: answer larger than {limit} bytes refused", retriable=False)
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _decode(body: bytes, method: str) -> Any:
        try:
            return json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise ServerError(f"{method}: answer is not UTF-8", retriable=False) from None
        except ValueError:
            raise ServerError(f"{method}: answer is not JSON: {body[:120]!r}", retriable=False) from None

    # -- getJob --------------------------------------------------------------------------
    def get_jobs(self, n: int, **extra: Any) -> list[dict[str, Any]]:
        """Up to n jobs in ONE request; [] when the server has none."""
        site = self.site
        if self.panda.dialect == "v1":
            fields: dict[str, Any] = {
                "site_name": site.name,
                "n_jobs": n,
                "prod_source_label": site.job_label,
                "node": self.node,
                "computing_element": site.computing_element or site.name,
                "resource_type": site.resource_type,
                **extra,
            }
            answer = self._post("acquire_jobs", fields)
            if not isinstance(answer, dict):
                raise ServerError(f"acquire_jobs: unexpected answer {str(answer)[:120]}", retriable=False)
            if not answer.get("success"):
                message = str(answer.get("message", ""))
                if "no jobs" in message.lower():
                    return []
                raise ServerError(f"acquire_jobs failed: {message[:200]}", retriable=False)
            data = answer.get("data") or {}
            jobs = data.get("jobs", []) if isinstance(data, dict) else data
            return self._job_list(jobs)
        fields = {
            "siteName": site.name,
            "computingElement": site.computing_element or site.name,
            "prodSourceLabel": site.job_label,
            "node": self.node,
            "resourceType": site.resource_type,
            "nJobs": n,
            **extra,
        }
        answer = self._post("getJob", fields)
        if not isinstance(answer, dict):
            raise ServerError(f"getJob: unexpected answer {str(answer)[:120]}", retriable=False)
        code = _int(answer.get("StatusCode"), -1)
        if code == 20:
            return []
        if code != 0:
            diag = answer.get("errorDialog", "")
            raise ServerError(
                f"getJob: StatusCode {code} {diag}"[:300], status=code, retriable=code not in SECURITY_CODES
            )
        if "jobs" in answer:
            return self._job_list(answer["jobs"])
        job = {k: v for k, v in answer.items() if k != "StatusCode"}
        return [job] if job.get("PandaID") else []

    @staticmethod
    def _job_list(jobs: Any) -> list[dict[str, Any]]:
        if not isinstance(jobs, list):
            raise ServerError(f"job list is a {type(jobs).__name__}, not a list", retriable=False)
        return [job for job in jobs if isinstance(job, dict)] + [
            {"__malformed__": job} for job in jobs if not isinstance(job, dict)
        ]

    # -- updates -------------------------------------------------------------------------
    def _fill(self, report: JobReport) -> JobReport:
        report.site_name = report.site_name or self.site.name
        report.node = report.node or self.node
        report.pilot_id = report.pilot_id or self.pilot_id
        return report

    def update_job(self, report: JobReport) -> UpdateAnswer:
        """One job update; the answer carries the server's command (tobekilled, …)."""
        self._fill(report)
        if self.panda.dialect == "v1":
            return self._v1_answer(self._post("update_job", update_fields(report, "v1")))
        return self._legacy_answer(self._post("updateJob", update_fields(report, "legacy")))

    def update_jobs(self, reports: list[JobReport]) -> list[UpdateAnswer]:
        """All updates in ONE request; one answer per report, in order."""
        if not reports:
            return []
        for report in reports:
            self._fill(report)
        if self.panda.dialect == "v1":
            answer = self._post("update_jobs_bulk", {"job_list": [update_fields(r, "v1") for r in reports]})
            if not isinstance(answer, dict) or not answer.get("success"):
                message = answer.get("message", "") if isinstance(answer, dict) else str(answer)[:120]
                raise ServerError(f"update_jobs_bulk failed: {message}", retriable=True)
            items = answer.get("data") or []
            answers = [self._v1_answer(item) for item in items]
        else:
            answer = self._post(
                "updateJobsInBulk", {"jobList": json.dumps([update_fields(r, "legacy") for r in reports])}
            )
            if not (
                isinstance(answer, list) and len(answer) == 2 and answer[0] is True and isinstance(answer[1], list)
            ):
                raise ServerError(f"updateJobsInBulk: unexpected answer {str(answer)[:160]}", retriable=True)
            answers = [self._legacy_answer(_bulk_item(item)) for item in answer[1]]
        if len(answers) != len(reports):
            raise ServerError(f"bulk update: {len(answers)} answers for {len(reports)} jobs", retriable=True)
        return answers

    def get_status(self, panda_ids: list[int]) -> dict[int, tuple[str, int]]:
        """PandaID → (status, attemptNr) in ONE request, not retried (the caller re-sends on error).

        v1: ``GET /api/v1/pilot/get_job_status`` with ``job_ids`` repeated once per id — the
        server's GET parser (``api/v1/common.py``) makes a list only of a repeated query key and
        casts each element to int, so ``job_ids=1,2`` is a type error there; its ``data`` is
        ``[{job_id, status, attempt_number}]``.  Legacy: ``POST /server/panda/getStatus`` with
        ``ids`` space-separated, answered ``status=a+b&attemptNr=1+2`` (JobDispatcher.getStatus).
        """
        if not panda_ids:
            return {}
        base = self.panda.url.rstrip("/")
        try:
            if self.panda.dialect == "v1":
                response = self.session.get(
                    f"{base}/api/v1/pilot/get_job_status",
                    params={"job_ids": [str(i) for i in panda_ids]},
                    timeout=self.panda.timeout,
                    verify=self._verify,
                )
            else:
                response = self.session.post(
                    f"{base}/server/panda/getStatus",
                    data={"ids": " ".join(str(i) for i in panda_ids)},
                    timeout=self.panda.timeout,
                    verify=self._verify,
                )
        except requests.RequestException as exc:
            raise ServerError(f"job status: {exc}") from None
        if response.status_code != 200:
            raise ServerError(f"job status: HTTP {response.status_code}")
        if self.panda.dialect == "v1":
            answer = response.json()
            if not isinstance(answer, dict) or not answer.get("success"):
                raise ServerError(f"get_job_status: {str(answer)[:200]}", retriable=False)
            return {
                int(item["job_id"]): (str(item.get("status", "")), int(item.get("attempt_number") or 0))
                for item in answer.get("data") or []
                if isinstance(item, dict) and "job_id" in item
            }
        fields = parse_qs(response.text.strip())
        statuses = (fields.get("status") or [""])[0].split("+")
        attempts = (fields.get("attemptNr") or [""])[0].split("+")
        if len(statuses) != len(panda_ids) or len(attempts) != len(panda_ids):
            raise ServerError(f"getStatus: {len(statuses)} answers for {len(panda_ids)} ids", retriable=False)
        return {
            pid: (st, int(at) if at.isdigit() else -1)
            for pid, st, at in zip(panda_ids, statuses, attempts, strict=True)
        }

    @staticmethod
    def _legacy_answer(answer: Any) -> UpdateAnswer:
        if not isinstance(answer, dict):
            return UpdateAnswer(False, None, 30, f"unexpected answer {str(answer)[:80]}")
        code = _int(answer.get("StatusCode"), 30)
        return UpdateAnswer(code == 0, _command(answer.get("command")), code, str(answer.get("errorDialog", "")))

    @staticmethod
    def _v1_answer(answer: Any) -> UpdateAnswer:
        if not isinstance(answer, dict):
            return UpdateAnswer(False, None, 30, f"unexpected answer {str(answer)[:80]}")
        data = answer.get("data") if isinstance(answer.get("data"), dict) else {}
        code = _int(data.get("StatusCode"), 0 if answer.get("success") else 30)
        ok = bool(answer.get("success")) and code == 0
        return UpdateAnswer(ok, _command(data.get("command")), code, str(answer.get("message", "")))


def _bulk_item(item: Any) -> Any:
    """One item of ``updateJobsInBulk``'s list: what the server's updateJob returned for that job.

    That is ``{"type": "json", "content": "<json>"}`` when we accept JSON, ``k=v`` text
    otherwise (older servers and our earlier dispatcher sent the JSON string itself).
    """
    if isinstance(item, dict) and "content" in item:
        item = item["content"]
    if isinstance(item, str):
        try:
            return json.loads(item)
        except ValueError:
            parsed = parse_qs(item)
            return {k: v[-1] for k, v in parsed.items()} if parsed else {"StatusCode": 30, "errorDialog": item[:80]}
    return item


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
