"""The monitor page and /metrics at scale: what they cost, and that the pilots don't pay for it.

For each queue depth (default 20K and 150K jobs, built by ``benchmarks/dispatcher.py``'s
cached ``prepared``), a real :class:`Dispatcher` serves a copy; a quarter of the jobs are
taken and run to a final state (a tenth of them failing with a pilot code), through the
store's own update path.  Printed:

- the page's overview: first computation (cold: the whole jobs-by-state history is read
  once) and a refresh after 1,000 more updates (incremental), and rendering the HTML;
- getJob + updateJob latency (p50/p99) from one pilot-like client over loopback, first
  alone, then while a second thread fetches ``/`` and ``/metrics`` every second (30 times
  what ten operators with a 30 s refresh ask; the 5 s cache bounds the queries).

Figures only, nothing asserted.  On a shared 2-core box compare runs side by side.

    python benchmarks/page.py [--sizes 20000,150000] [--window 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.dispatcher import _client, prepared
from compass_pilot.job import JobReport
from compass_pilot.panda import page
from compass_pilot.panda.dispatcher import Dispatcher


def run_some(dispatcher: Dispatcher, n: int) -> None:
    """Take n jobs and bring them to a final state through the store (1 in 10 failing with 1305)."""
    store = dispatcher.store
    left = n
    while left > 0:
        jobs = store.get_jobs(min(512, left), node=f"wn{left % 37:03d}")
        if not jobs:
            return
        left -= len(jobs)
        items = []
        for i, job in enumerate(jobs):
            pid, att = int(job["PandaID"]), int(job["attemptNr"])
            items.append({"panda_id": pid, "attempt_nr": att, "state": "running", "node": "wn"})
            final = {"panda_id": pid, "attempt_nr": att, "state": "finished", "n_events": 100}
            if i % 10 == 0:
                final.update(state="failed", pilot_error_code=1305, pilot_error_diag="payload failed")
            items.append(final)
        store.update_many(items, "legacy", "none")


def pilot_latency(url: str, window: float) -> tuple[list[float], list[float]]:
    client = _client(url)
    get_lat, upd_lat = [], []
    end = time.monotonic() + window
    while time.monotonic() < end:
        t0 = time.perf_counter()
        jobs = client.get_jobs(1)
        get_lat.append(time.perf_counter() - t0)
        if not jobs:
            break
        job = jobs[0]
        t0 = time.perf_counter()
        client.update_job(JobReport(int(job["PandaID"]), "running", int(job["attemptNr"])))
        upd_lat.append(time.perf_counter() - t0)
    client.close()
    return get_lat, upd_lat


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,150000")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "compass-bench-dispatcher"))
    args = parser.parse_args()
    print(f"{'jobs':>8} {'cold ms':>8} {'warm ms':>8} {'html ms':>8} | {'getJob p50/p99 ms':>18} "
          f"{'update p50/p99':>15} | {'with page: getJob':>18} {'update':>15} {'pages':>6}")  # fmt: skip
    for n in (int(x) for x in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as work:
            db = prepared(Path(args.cache), n, Path(work))
            dispatcher = Dispatcher(str(db), port=0, check_interval=3600).start()
            try:
                run_some(dispatcher, n // 4)
                data = page.page_data(dispatcher.store)
                t0 = time.perf_counter()
                overview = data.overview()
                cold = time.perf_counter() - t0
                run_some(dispatcher, 500)  # 1,000 more updates
                data._cached = None  # force the refresh the 5 s cache would do
                t0 = time.perf_counter()
                overview = data.overview()
                warm = time.perf_counter() - t0
                t0 = time.perf_counter()
                page.render_overview(overview, {})
                html_ms = (time.perf_counter() - t0) * 1000
                alone = pilot_latency(dispatcher.url, args.window)
                stop = threading.Event()
                pages = [0]

                def browse(url: str = dispatcher.url, stop: threading.Event = stop, pages: list[int] = pages) -> None:
                    with requests.Session() as session:
                        while not stop.is_set():
                            session.get(f"{url}/", timeout=60)
                            session.get(f"{url}/metrics", timeout=60)
                            pages[0] += 2
                            stop.wait(1.0)  # 1 page + 1 scrape a second: 30x ten operators on a 30 s refresh

                browser = threading.Thread(target=browse, daemon=True)
                browser.start()
                loaded = pilot_latency(dispatcher.url, args.window)
                stop.set()
                browser.join(60)
            finally:
                dispatcher.stop()

        def pair(values: list[float]) -> str:
            return f"{pct(values, 0.5):.1f}/{pct(values, 0.99):.1f}"

        print(
            f"{n:>8} {cold * 1000:>8.0f} {warm * 1000:>8.0f} {html_ms:>8.1f} | {pair(alone[0]):>18} "
            f"{pair(alone[1]):>15} | {pair(loaded[0]):>18} {pair(loaded[1]):>15} {pages[0]:>6}"
        )
        print(f"{'':>8} median getJob alone {statistics.median(alone[0]) * 1000:.1f} ms over {len(alone[0])} jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
