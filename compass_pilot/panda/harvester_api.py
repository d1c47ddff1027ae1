"""The server side of Harvester's own calls (``/api/v1/harvester/*``), as panda-server 1.0 answers them.

Why: a real Harvester pointed at the embedded dispatcher also reports about itself —
its propagator sends worker states (``update_workers``), worker statistics, service
metrics and dialog messages, its command manager heartbeats and asks for commands.
Answered 403, the propagator logged an error every cycle and re-sent the same workers
for ever (it stops propagating a worker only once the server accepted it), and the
operator saw nothing of the workers.  Here each call is stored and answered in the
server's shape (``pandaserver/api/v1/harvester_api.py``: ``{success, message, data}``):

- ``update_workers`` → one ``True`` per worker stored (``False`` for an entry without a
  ``workerID``), ``data`` is that list, as ``DBProxy.updateWorkers`` returns;
- ``report_worker_statistics`` → ``message`` "OK"; kept per (instance, queue) and served
  by ``get_worker_statistics`` as ``{site: {harvester: {jobType: {resourceType: {status: n}}}}}``
  for the last 4 hours, as ``getWorkerStats`` does;
- ``add_dialogs``, ``heartbeat``, ``update_service_metrics`` → stored (dialogs: the newest
  :data:`DIALOGS_KEPT` per instance);
- ``get_current_worker_id`` → the largest workerID stored for the instance; with none the
  server's own answer (``success`` false, "database error in the PanDA server": its
  ``MAX(workerID)`` of no rows is NULL), which Harvester handles;
- ``acquire_commands`` → no commands (this dispatcher never sends Harvester commands; a
  job kill reaches the pilot in its update answer), ``acknowledge_commands`` → success.

An instance belongs to the identity that first spoke for it: another identity using the
same ``harvester_id`` is refused, as a job's updates are only taken from its owner.
"""

from __future__ import annotations

import json
import time
from typing import Any

from compass_pilot.panda.store import JobStore

POST_METHODS = frozenset(
    {
        "update_workers",
        "report_worker_statistics",
        "add_dialogs",
        "heartbeat",
        "update_service_metrics",
        "acquire_commands",
        "acknowledge_commands",
    }
)
GET_METHODS = frozenset({"get_current_worker_id", "get_worker_statistics"})
#: panda-server's wording (api/v1/common.py)
MESSAGE_DATABASE = "database error in the PanDA server"
#: dialog messages kept per instance (the page shows the newest)
DIALOGS_KEPT = 1000
#: worker statistics older than this are not served (``getWorkerStats``'s time limit)
STATS_MAX_AGE = 4 * 3600.0


def response(success: bool, message: str = "", data: Any = None) -> dict[str, Any]:
    """``generate_response``'s shape."""
    return {"success": success, "message": message, "data": data}


def _missing(method: str, fields: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any] | None:
    absent = [n for n in names if n not in fields]
    if not absent:
        return None
    listed = " and ".join(repr(n) for n in absent)
    return response(
        False, f"Argument error: {method}() missing {len(absent)} required positional argument(s): {listed}"
    )


def _json_list(value: Any) -> list[Any] | None:
    """A list argument: JSON bodies carry it as a list, form bodies as its JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, list) else None


def _claim(store: JobStore, conn: Any, harvester_id: str, identity: str, data: Any = None) -> bool:
    """Bind the instance to ``identity`` on first contact; False when another identity owns it."""
    row = conn.execute("SELECT owner FROM harvester_instances WHERE harvester_id = ?", (harvester_id,)).fetchone()
    if row is not None and row["owner"] != identity:
        return False
    conn.execute(
        "INSERT INTO harvester_instances(harvester_id, owner, data, last_seen) VALUES (?,?,?,?)"
        " ON CONFLICT(harvester_id) DO UPDATE SET last_seen = excluded.last_seen,"
        " data = COALESCE(excluded.data, data)",
        (harvester_id, identity, json.dumps(data, sort_keys=True) if data is not None else None, time.time()),
    )
    return True


def handle(store: JobStore, method: str, fields: dict[str, Any], identity: str) -> dict[str, Any]:
    """The answer to one Harvester call (``identity``: the authenticated caller's name)."""
    if method == "get_worker_statistics":
        return response(True, data=worker_statistics(store))
    if method == "acknowledge_commands":
        return _missing(method, fields, ("command_ids",)) or response(True)
    need = {
        "update_workers": ("harvester_id", "workers"),
        "report_worker_statistics": ("harvester_id", "panda_queue", "statistics"),
        "add_dialogs": ("harvester_id", "dialogs"),
        "heartbeat": ("harvester_id",),
        "update_service_metrics": ("harvester_id", "metrics"),
        "acquire_commands": ("harvester_id", "n_commands"),
        "get_current_worker_id": ("harvester_id",),
    }[method]
    refusal = _missing(method, fields, need)
    if refusal:
        return refusal
    harvester_id = str(fields["harvester_id"])
    if method == "get_current_worker_id":
        with store.read() as conn:
            row = conn.execute(
                "SELECT MAX(worker_id) AS m FROM harvester_workers WHERE harvester_id = ?", (harvester_id,)
            ).fetchone()
        return response(True, data=row["m"]) if row["m"] is not None else response(False, MESSAGE_DATABASE)
    with store._write() as conn:
        data = fields.get("data") if method == "heartbeat" else None
        if not _claim(store, conn, harvester_id, identity, data):
            return response(False, f"harvester_id {harvester_id} belongs to another identity")
        if method == "update_workers":
            workers = _json_list(fields["workers"])
            if workers is None:
                return response(False, "workers must be a list")
            return response(True, data=[_store_worker(conn, harvester_id, w) for w in workers])
        if method == "report_worker_statistics":
            try:
                stats = json.loads(fields["statistics"]) if isinstance(fields["statistics"], str) else None
            except ValueError:
                stats = None
            if not isinstance(stats, dict):
                return response(False, "statistics must be the JSON text of a dictionary")
            conn.execute(
                "INSERT OR REPLACE INTO harvester_worker_stats(harvester_id, panda_queue, statistics, time)"
                " VALUES (?,?,?,?)",
                (harvester_id, str(fields["panda_queue"]), json.dumps(stats, sort_keys=True), time.time()),
            )
            return response(True, "OK")
        if method == "add_dialogs":
            dialogs = _json_list(fields["dialogs"])
            if dialogs is None:
                return response(False, "dialogs must be a list")
            _store_dialogs(conn, harvester_id, dialogs)
            return response(True)
        if method == "update_service_metrics":
            metrics = _json_list(fields["metrics"])
            if metrics is None:
                return response(False, "metrics must be a list")
            for item in metrics:
                if isinstance(item, list) and len(item) == 3:  # [creation time, host, metrics JSON]
                    conn.execute(
                        "INSERT OR REPLACE INTO harvester_metrics(harvester_id, host, created, metrics)"
                        " VALUES (?,?,?,?)",
                        (harvester_id, str(item[1]), str(item[0]), str(item[2])),
                    )
            return response(True, data=True)
        if method == "acquire_commands":
            return response(True, data=[])
        return response(True)  # heartbeat


def _store_worker(conn: Any, harvester_id: str, worker: Any) -> bool:
    if not isinstance(worker, dict) or "workerID" not in worker:
        return False
    try:
        worker_id = int(worker["workerID"])
    except (TypeError, ValueError):
        return False
    ids = worker.get("pandaid_list")
    n_jobs = worker.get("nJobs")
    conn.execute(
        "INSERT OR REPLACE INTO harvester_workers(harvester_id, worker_id, status, computing_site, batch_id, n_jobs,"
        " panda_ids, attributes, time) VALUES (?,?,?,?,?,?,?,?,?)",
        (
            harvester_id,
            worker_id,
            str(worker.get("status", "")),
            str(worker.get("computingSite", "")),
            str(worker.get("batchID", "")),
            n_jobs if isinstance(n_jobs, int) else None,
            json.dumps(ids) if isinstance(ids, list) else None,
            json.dumps(worker, sort_keys=True, default=str)[:20000],
            time.time(),
        ),
    )
    return True


def _store_dialogs(conn: Any, harvester_id: str, dialogs: list[Any]) -> None:
    now = time.time()
    for dialog in dialogs:
        if not isinstance(dialog, dict) or "diagID" not in dialog:
            continue
        conn.execute(
            "INSERT OR REPLACE INTO harvester_dialogs(harvester_id, diag_id, module, identifier, level, message,"
            " created, time) VALUES (?,?,?,?,?,?,?,?)",
            (
                harvester_id,
                int(dialog["diagID"]),
                str(dialog.get("moduleName", ""))[:100],
                str(dialog.get("identifier", ""))[:100],
                str(dialog.get("messageLevel", ""))[:20],
                str(dialog.get("diagMessage", ""))[:2000],
                str(dialog.get("creationTime", "")),
                now,
            ),
        )
    conn.execute(
        "DELETE FROM harvester_dialogs WHERE harvester_id = ? AND diag_id NOT IN"
        " (SELECT diag_id FROM harvester_dialogs WHERE harvester_id = ? ORDER BY time DESC, diag_id DESC LIMIT ?)",
        (harvester_id, harvester_id, DIALOGS_KEPT),
    )


def worker_statistics(store: JobStore) -> dict[str, Any]:
    """``{site: {harvester: {jobType: {resourceType: {status: n}}}}}`` of the last 4 hours."""
    out: dict[str, Any] = {}
    with store.read() as conn:
        rows = conn.execute(
            "SELECT harvester_id, panda_queue, statistics FROM harvester_worker_stats WHERE time >= ?",
            (time.time() - STATS_MAX_AGE,),
        ).fetchall()
    for row in rows:
        out.setdefault(row["panda_queue"], {})[row["harvester_id"]] = json.loads(row["statistics"])
    return out
