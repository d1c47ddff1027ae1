"""The dispatcher's page: the operator's HTML view of the store's summary."""

from __future__ import annotations

import html
from typing import Any


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(summary: dict[str, Any]) -> str:
    """A page in the spirit of the PanDA monitor: status counts, attempts, errors, runs."""
    status_rows = [{"status": k, "jobs": v} for k, v in sorted(summary["jobs_by_status"].items())]
    attempt_rows = [{"attemptNr": k, "jobs": v} for k, v in sorted(summary["attempts"].items())]
    error_rows = [
        {"code": e["code"], "count": e["count"], "source": e["source"], "sample diagnostic": e["sample"]}
        for e in summary["errors"]
    ]
    run_columns = list(summary["runs"][0]) if summary["runs"] else ["run", "chunks"]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>compass-pilot dispatcher</title>"
        "<style>body{font-family:sans-serif} table{border-collapse:collapse;margin:0 0 1em}"
        " td,th{border:1px solid #999;padding:2px 8px}</style></head><body>"
        f"<h1>compass-pilot dispatcher</h1><p>{summary['total_jobs']} jobs, {summary['open_jobs']} open,"
        f" {summary['events']} events reconstructed, {summary['updates']} updates"
        f" ({summary['duplicate_final_updates']} duplicate final)</p>"
        f"<h2>Jobs by status</h2>{_table(status_rows, ['status', 'jobs'])}"
        f"<h2>Attempts</h2>{_table(attempt_rows, ['attemptNr', 'jobs'])}"
        f"<h2>Errors by code</h2>{_table(error_rows, ['code', 'count', 'source', 'sample diagnostic'])}"
        f"<h2>Runs</h2>{_table(summary['runs'], run_columns)}"
        "</body></html>"
    )
