"""The dispatcher's operator pages: overview, job list, job page, and ``/metrics``.

Server-rendered HTML with inline CSS and an inline SVG plot: no build step, no script, no
CDN, so it works from a MOM node through an SSH tunnel.  The front page answers what an
operator running production asks, in that order: how many jobs in which state (PanDA's
states, lifecycle order, the monitor's colours), what changed over time (the plot), how
far each task is, each run's chain, which jobs are stuck, which errors hit how many jobs,
and which nodes and pilots are working.  Every count links to the job list filtered on
it; every PandaID to its job page.  The figures come from :mod:`pagedata` (cached), so
an open page refreshing itself costs the pilots' requests nothing.
"""

from __future__ import annotations

import html
import json
import time
import weakref
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, urlencode

from compass_pilot.panda.metrics import RequestStats, render_metrics
from compass_pilot.panda.pagedata import COLOURS, STATES, Overview, PageData, error_name

REFRESH_SECONDS = 30
_data: weakref.WeakKeyDictionary[Any, PageData] = weakref.WeakKeyDictionary()
_stats: weakref.WeakKeyDictionary[Any, RequestStats] = weakref.WeakKeyDictionary()


def page_data(store: Any) -> PageData:
    """The store's cached page figures (one per store, made on first use)."""
    data = _data.get(store)
    if data is None:
        data = _data.setdefault(store, PageData(store))
    return data


def request_stats(store: Any) -> RequestStats:
    """The store's request counters and latencies (observed by the wire)."""
    stats = _stats.get(store)
    if stats is None:
        stats = _stats.setdefault(store, RequestStats())
    return stats


def handle_get(store: Any, path: str, query: str) -> tuple[int, str, str | dict[str, Any]] | None:
    """(status, content type, body) for the operator's GET routes; None when the path is not ours."""
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    if path == "/":
        data = page_data(store)
        overview = data.overview()
        key = (overview.as_of, params.get("refresh", "1") != "0")
        html_text = data.rendered.get(key)
        if html_text is None:  # rendered once per cached overview: a page polled hard costs a dict lookup
            html_text = render_overview(overview, params)
            data.rendered = {k: v for k, v in data.rendered.items() if k[0] == overview.as_of}
            data.rendered[key] = html_text
        return 200, "text/html; charset=utf-8", html_text
    if path == "/metrics":
        text = render_metrics(page_data(store).overview(), request_stats(store), STATES)
        return 200, "text/plain; version=0.0.4; charset=utf-8", text
    if path == "/jobs":
        try:
            jobs = page_data(store).jobs(params)
        except ValueError as exc:
            return 400, "text/html; charset=utf-8", _document("Bad filter", f"<p>{_e(exc)}</p>", params)
        return 200, "text/html; charset=utf-8", render_job_list(jobs, params)
    if path.startswith("/jobs/") or path.startswith("/api/jobs/"):
        try:
            panda_id = int(path.rsplit("/", 1)[1])
        except ValueError:
            return 400, "application/json", {"error": "bad job id"}
        job = page_data(store).job(panda_id)
        if path.startswith("/api/"):
            return (200, "application/json", job) if job else (404, "application/json", {"error": "no such job"})
        if job is None:
            return 404, "text/html; charset=utf-8", _document("No such job", f"<p>No job {panda_id}.</p>", params)
        return 200, "text/html; charset=utf-8", render_job(job, store)
    return None


# -- helpers ---------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _ago(when: float | None, now: float) -> str:
    if not when:
        return "never"
    return _span(now - when) + " ago"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def _state(state: str) -> str:
    colour = COLOURS.get(state, "#777")
    return f'<span class="state" style="background:{colour}">{_e(state)}</span>'


def _link(text: Any, **filters: Any) -> str:
    return f'<a href="/jobs?{_e(urlencode(filters))}">{_e(text)}</a>'


def _job_link(panda_id: int) -> str:
    return f'<a href="/jobs/{int(panda_id)}">{int(panda_id)}</a>'


def _table(headers: Iterable[str], rows: Iterable[str], cls: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


CSS = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:16px 24px;color:#1d1d1f;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:22px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}
.asof{color:#555;font-size:13px} a{color:#1a5fb4;text-decoration:none} a:hover{text-decoration:underline}
table{border-collapse:collapse;font-size:13px;background:#fff;margin:4px 0}
th{background:#eef1f5;text-align:left;font-weight:600} th,td{border:1px solid #d6dbe1;padding:3px 8px}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.state{display:inline-block;color:#fff;border-radius:3px;padding:0 6px;font-size:12px}
.states{display:flex;gap:6px;flex-wrap:wrap}
.states a{display:block;color:#fff;border-radius:4px;padding:6px 12px;min-width:70px}
.states b{display:block;font-size:20px} .states span{font-size:12px}
.bar{background:#e4e7eb;width:120px;height:10px;display:inline-block;vertical-align:middle;border-radius:2px}
.bar i{display:block;height:10px;background:#1e7b34;border-radius:2px}
tr.stuck td{background:#fff4e5} .diag{max-width:520px;font-family:monospace;font-size:12px;white-space:pre-wrap}
.muted{color:#777} form.filters input,form.filters select{font-size:13px;margin-right:6px;width:110px}
svg text{font-size:11px;fill:#333}
"""


def _document(title: str, body: str, params: dict[str, str], refresh: bool = False) -> str:
    meta = ""
    if refresh and params.get("refresh", "1") != "0":
        meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title>{meta}<style>{CSS}</style></head><body>"
        f"<p class='muted'><a href='/'>overview</a> · <a href='/jobs'>jobs</a> · <a href='/metrics'>metrics</a></p>"
        f"{body}</body></html>"
    )


# -- the overview ----------------------------------------------------------------------------
def render_overview(o: Overview, params: dict[str, str]) -> str:
    now = o.as_of
    refresh = params.get("refresh", "1") != "0"
    parts = [
        "<h1>compass-pilot dispatcher</h1>",
        f"<p class='asof' id='as-of'>as of {_utc(now)} · "
        + (
            f"refreshes every {REFRESH_SECONDS} s (<a href='/?refresh=0'>stop</a>)"
            if refresh
            else "auto-refresh off (<a href='/'>start</a>)"
        )
        + f" · {o.total} jobs · {o.events} events reconstructed"
        + (f" · oldest waiting job queued {_span(o.queue_age)}" if o.queue_age else "")
        + "</p>",
        "<h2>Jobs by state</h2>",
        _state_boxes(o.by_state),
        "<h2>Jobs by state over time</h2>",
        render_plot(*o.history),
        "<h2>Tasks</h2>",
        _tasks(o.tasks),
        "<h2>Runs</h2>",
        _runs(o.runs),
        f"<h2>Stuck jobs ({len(o.stuck)})</h2>",
        _stuck(o.stuck, now),
        "<h2>Errors (by jobs)</h2>",
        _errors(o.errors, now),
        "<h2>Sites, nodes and pilots</h2>",
        _sites(o.sites, now),
        _nodes(o.nodes, o.workers, now),
        _harvesters(o.harvesters, o.dialogs, now),
    ]
    return _document("compass-pilot dispatcher", "".join(parts), params, refresh=True)


def _state_boxes(by_state: dict[str, int]) -> str:
    boxes = []
    for state in (*STATES, *sorted(set(by_state) - set(STATES))):
        n = by_state.get(state, 0)
        colour = COLOURS.get(state, "#777")
        style = f"background:{colour}" + ("" if n else ";opacity:.35")
        href = f"/jobs?{urlencode({'status': state})}"
        boxes.append(
            f'<a class="state-box" data-state="{_e(state)}" style="{style}" href="{_e(href)}">'
            f"<b>{n}</b><span>{_e(state)}</span></a>"
        )
    return f'<div class="states">{"".join(boxes)}</div>'


def _tasks(tasks: list[dict[str, Any]]) -> str:
    if not tasks:
        return "<p class='muted'>no tasks submitted</p>"
    rows = []
    for t in tasks:
        pct = t["pct_done"]
        rows.append(
            f'<tr class="task" data-task-id="{t["task_id"]}"><td class="num">{t["task_id"]}</td>'
            f"<td>{_link(t['name'], task=t['task_id'])}</td><td>{_e(t['type'])}{' (chain)' if t['chain'] else ''}</td>"
            f"<td>{_e(t['status'])}</td>"
            f'<td class="pct num"><span class="bar"><i style="width:{pct:.0f}%"></i></span> {pct:.0f} %</td>'
            f"<td class='num'>{t['finished']}</td>"
            f"<td class='num'>{_link(t['failed'], task=t['task_id'], status='failed')}</td>"
            f"<td class='num'>{t['active']}</td><td class='num'>{t['jobs']}</td>"
            f"<td class='num'>{t['attempts']}</td></tr>"
        )
    headers = ["task", "name", "type", "status", "% done", "finished", "failed", "active", "jobs", "attempts"]
    return _table(headers, rows, "tasks")


_RUN_HEADERS = {"cross_checked": "cross-check (mDST)", "dump_cross_checked": "cross-check (dump)"}


def _runs(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "<p class='muted'>no reconstruction jobs yet</p>"
    columns = list(runs[0])
    for row in runs[1:]:
        columns += [c for c in row if c not in columns]
    rows = []
    for r in runs:
        cells = []
        for c in columns:
            value = r.get(c, "")
            if c == "run":
                cells.append(f"<td>{_link(value, run=value)}</td>")
            elif isinstance(value, int | float) and not isinstance(value, bool):
                cells.append(f"<td class='num'>{_e(value)}</td>")
            else:
                cells.append(f"<td>{_e(value)}</td>")
        rows.append(f'<tr class="run">{"".join(cells)}</tr>')
    return _table([_RUN_HEADERS.get(c, c.replace("_", " ")) for c in columns], rows, "runs")


def _stuck(stuck: list[dict[str, Any]], now: float) -> str:
    if not stuck:
        return "<p class='muted'>none: every sent or running job's pilot reported recently</p>"
    rows = []
    for j in stuck:
        code = 102 if j["status"] == "sent" else 100
        rows.append(
            f'<tr class="stuck" data-panda-id="{j["panda_id"]}"><td>{_job_link(j["panda_id"])}</td>'
            f"<td class='num'>{_e(j['task_id'])}</td><td>{_e(j['run'])}/{_e(j['chunk'])}</td>"
            f"<td>{_state(j['status'])}</td>"
            f"<td class='num'>{_span(j['age_in_state'])}</td><td>{_ago(j['heartbeat'], now)}</td>"
            f"<td>{_link(j['node'], node=j['node']) if j['node'] else '—'}</td><td class='num'>{j['attempt_nr']}</td>"
            f"<td>{_span(j['fails_in']) if j['fails_in'] else 'due now'} ({code} {error_name(code)})</td></tr>"
        )
    headers = [
        "PandaID",
        "task",
        "run/chunk",
        "state",
        "age in state",
        "last heartbeat",
        "node",
        "attempt",
        "dispatcher fails it in",
    ]
    return _table(headers, rows, "stuck")


def _errors(errors: list[dict[str, Any]], now: float) -> str:
    if not errors:
        return "<p class='muted'>no failed attempts</p>"
    rows = []
    for e in errors:
        rows.append(
            f'<tr class="error-row" data-code="{e["code"]}"><td class="num">{e["code"]}</td>'
            f"<td><b>{_e(e['name'])}</b></td><td>{_e(e['message'])}</td>"
            f"<td class='num'>{_link(e['jobs'], error=e['code'])}</td><td class='num'>{e['attempts']}</td>"
            f"<td class='diag'>{_e(e['latest_diag'])}</td><td>{_ago(e['last_time'], now)}</td>"
            f"<td>{_e(e['source'])}</td></tr>"
        )
    headers = ["code", "name", "meaning", "jobs", "attempts", "latest diagnostic", "last seen", "source"]
    return _table(headers, rows, "errors")


def _sites(sites: list[dict[str, Any]], now: float) -> str:
    if not sites:
        return ""
    rows = [
        f'<tr class="site"><td>{_e(x["site"])}</td><td class="num">{x["nodes"]}</td><td>{_e(x["queues"] or "")}</td>'
        f"<td>{_ago(x['last_seen'], now)}</td></tr>"
        for x in sites
    ]
    return _table(["site", "worker nodes", "queues", "last seen"], rows, "sites")


def _nodes(nodes: list[dict[str, Any]], workers: dict[str, int], now: float) -> str:
    parts = []
    if workers:
        parts.append("<p>Harvester workers: " + ", ".join(f"{_e(s)} {n}" for s, n in sorted(workers.items())) + "</p>")
    if not nodes:
        return "".join(parts) + "<p class='muted'>no node has reported yet</p>"
    rows = [
        f'<tr class="node"><td>{_link(n["node"], node=n["node"])}</td><td class="num">{n["pilots"]}</td>'
        f"<td class='num'>{n['active']}</td><td class='num'>{n['finished']}</td><td class='num'>{n['failed']}</td>"
        f"<td>{_ago(n['last_seen'], now)}</td></tr>"
        for n in nodes
    ]
    parts.append(_table(["node", "pilots", "active", "finished", "failed", "last seen"], rows, "nodes"))
    return "".join(parts)


def _harvesters(harvesters: list[dict[str, Any]], dialogs: list[dict[str, Any]], now: float) -> str:
    if not harvesters:
        return ""
    rows = [
        f'<tr class="harvester"><td>{_e(h["harvester_id"])}</td><td>{_e(h["owner"])}</td>'
        f"<td>{_e(h['workers'] or '-')}</td><td>{_ago(h['last_seen'], now)}</td></tr>"
        for h in harvesters
    ]
    headers = ["instance", "identity", "workers", "last seen"]
    parts = ["<h2>Harvester instances</h2>", _table(headers, rows, "harvesters")]
    if dialogs:
        rows = [
            f'<tr class="dialog"><td>{_ago(d["time"], now)}</td><td>{_e(d["harvester_id"])}</td>'
            f"<td>{_e(d['level'])}</td>"
            f"<td>{_e(d['module'])}</td><td>{_e(d['identifier'])}</td><td>{_e(d['message'])}</td></tr>"
            for d in dialogs
        ]
        parts.append(_table(["when", "instance", "level", "module", "about", "message"], rows, "dialogs"))
    return "".join(parts)


# -- the plot --------------------------------------------------------------------------------
def render_plot(times: list[float], series: dict[str, list[int]], width: int = 900, height: int = 220) -> str:
    """Jobs by state over time as a stacked area chart, inline SVG (lifecycle order bottom → top)."""
    if not times or not series:
        return "<p class='muted'>no jobs yet</p>"
    left, bottom, top, right = 44, 22, 8, 130
    plot_w, plot_h = width - left - right, height - top - bottom
    stack_max = max(sum(series[s][i] for s in series) for i in range(len(times))) or 1
    t0, t1 = times[0], times[-1] if times[-1] > times[0] else times[0] + 1

    def x(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * plot_w

    def y(v: float) -> float:
        return top + plot_h - v / stack_max * plot_h

    base = [0] * len(times)
    shapes = []
    legend = []
    order = [s for s in STATES if s in series] + sorted(set(series) - set(STATES))
    for k, state in enumerate(order):
        upper = [b + v for b, v in zip(base, series[state], strict=True)]
        points = [f"{x(t):.1f},{y(u):.1f}" for t, u in zip(times, upper, strict=True)]
        points += [f"{x(t):.1f},{y(b):.1f}" for t, b in reversed(list(zip(times, base, strict=True)))]
        colour = COLOURS.get(state, "#777")
        shapes.append(
            f'<polygon points="{" ".join(points)}" fill="{colour}" fill-opacity="0.9"><title>{_e(state)}'
            f"</title></polygon>"
        )
        ly = top + 4 + k * 16
        legend.append(
            f'<rect x="{width - right + 12}" y="{ly}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{width - right + 27}" y="{ly + 9}">{_e(state)} {series[state][-1]}</text>'
        )
        base = upper
    axes = (
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>'
        f'<text x="{left - 4}" y="{top + 10}" text-anchor="end">{stack_max}</text>'
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>'
        f'<text x="{left}" y="{height - 6}">{time.strftime("%H:%M:%S", time.gmtime(t0))}</text>'
        f'<text x="{left + plot_w}" y="{height - 6}" text-anchor="end">'
        f"{time.strftime('%H:%M:%S', time.gmtime(t1))} UTC</text>"
    )
    return (
        f'<svg id="history" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="jobs by state over time">{"".join(shapes)}{axes}{"".join(legend)}</svg>'
    )


# -- the job list and the job page ---------------------------------------------------------
def render_job_list(jobs: list[dict[str, Any]], params: dict[str, str]) -> str:
    now = time.time()
    fields = []
    for key in ("task", "run", "status", "error", "node"):
        value = params.get(key, "")
        if key == "status":
            options = "".join(f"<option{' selected' if s == value else ''}>{s}</option>" for s in ("", *STATES))
            fields.append(f"<label>status <select name='status'>{options}</select></label>")
        else:
            fields.append(f"<label>{key} <input name='{key}' value='{_e(value)}'></label>")
    form = f"<form class='filters' method='get' action='/jobs'>{''.join(fields)}<button>filter</button></form>"
    rows = [
        f'<tr class="job" data-panda-id="{j["panda_id"]}"><td>{_job_link(j["panda_id"])}</td>'
        f"<td class='num'>{_link(j['task_id'], task=j['task_id'])}</td><td>{_e(j['run'])}/{_e(j['chunk'])}</td>"
        f"<td>{_e(j['job_type'])}</td><td>{_state(j['status'])}</td>"
        f"<td class='num'>{j['attempt_nr']}/{j['max_attempts']}</td>"
        f"<td>{_link(j['node'], node=j['node']) if j['node'] else '—'}</td><td>{_ago(j['modified'], now)}</td>"
        f"<td class='num'>{_e(j['error_code'] or '')}</td>"
        f"<td>{_e(error_name(j['error_code']) if j['error_code'] else '')}</td>"
        f"<td class='diag'>{_e((j['error_diag'] or '')[:160])}</td></tr>"
        for j in jobs
    ]
    active = {k: v for k, v in params.items() if v and k != "refresh"}
    title = "Jobs" + (" — " + ", ".join(f"{k} {v}" for k, v in active.items()) if active else "")
    headers = [
        "PandaID",
        "task",
        "run/chunk",
        "type",
        "state",
        "attempt",
        "node",
        "changed",
        "error",
        "name",
        "diagnostic",
    ]
    body = f"<h1>{_e(title)}</h1>{form}<p class='muted'>{len(jobs)} shown (newest first, at most 500)</p>"
    return _document(title, body + _table(headers, rows, "jobs"), params)


def render_job(job: dict[str, Any], store: Any) -> str:
    now = time.time()
    spec_rows = [
        f"<tr><th>{_e(k)}</th><td class='diag'>{_e(json.dumps(v) if isinstance(v, dict | list) else v)}</td></tr>"
        for k, v in sorted(job["spec"].items())
    ]
    status_rows = [
        f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
        for k, v in (
            ("state", job["status"]),
            ("attempt", f"{job['attempt_nr']} of {job['max_attempts']}"),
            ("task", job["task_id"]),
            ("run / chunk", f"{job['run']} / {job['chunk']}"),
            ("node", job["node"]),
            ("pilot", job["pilot_id"]),
            ("last heartbeat", _ago(job["heartbeat"], now)),
            ("start / end", f"{job['start_time'] or '—'} / {job['end_time'] or '—'}"),
            ("events", job["n_events"]),
            (
                "error",
                f"{job['error_code']} {error_name(job['error_code'])}: {job['error_diag']}"
                if job["error_code"]
                else "",
            ),
        )
    ]
    updates = [
        f"<tr class='update'><td>{_utc(u['time'])}</td><td class='num'>{u['attempt_nr']}</td>"
        f"<td>{_state(u['state'])}</td>"
        f"<td>{_e(u['node'])}</td><td>{_e(u['error_code'] or '')}</td><td class='diag'>{_e(u['error_diag'] or '')}</td>"
        f"<td>{'accepted' if u['accepted'] else 'duplicate' if u['duplicate'] else 'refused'}</td>"
        f"<td>{_e(u['command'] or '')}</td><td>{_e(u['dialect'])}</td></tr>"
        for u in job["updates"]
    ]
    errors = [
        f"<tr><td>{_utc(e['time'])}</td><td class='num'>{e['attempt_nr']}</td><td>{e['code']}</td>"
        f"<td>{_e(error_name(e['code']))}</td><td class='diag'>{_e(e['diag'])}</td><td>{_e(e['source'])}</td></tr>"
        for e in job["errors"]
    ]
    body = (
        f"<h1>Job {int(job['panda_id'])} {_state(job['status'])}</h1>"
        f"<p class='muted'><a href='/api/jobs/{int(job['panda_id'])}'>as JSON</a></p>"
        + _table(["", ""], status_rows, "job-status")
        + f"<h2>Updates ({len(updates)})</h2>"
        + _table(
            ["time", "attempt", "state", "node", "code", "diagnostic", "", "command", "dialect"], updates, "updates"
        )
        + (
            f"<h2>Failed attempts ({len(errors)})</h2>"
            + _table(["time", "attempt", "code", "name", "diagnostic", "source"], errors, "job-errors")
            if errors
            else ""
        )
        + "<h2>Job spec</h2>"
        + _table(["field", "value"], spec_rows, "spec")
    )
    return _document(f"job {job['panda_id']}", body, {})
