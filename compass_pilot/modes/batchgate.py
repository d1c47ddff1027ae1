"""The daemon's gate before its first getJob, started before the daemon itself is built.

Kept apart from :mod:`compass_pilot.modes.multijob` (and light to import) so that
``compass-pilot daemon`` starts the batch broker and the batch system's probe first,
and imports the daemon's own machinery (lifecycle, journal, PanDA client) while they
run: the broker's start, its radical.saga import and its job service's PTY bootstrap
are the longest leg from the daemon's start to its first submission.
"""

from __future__ import annotations

import threading
from typing import Any

from compass_pilot.config import SiteConfig


def make_backend(site: SiteConfig) -> Any:
    """The batch backend: the Harvester plugins (radical.saga) in a broker child process.

    radical.saga never enters the daemon's own memory (~30 MB, its monitor threads and
    shells live in the broker); see :mod:`harvester_plugins.batch_broker`.
    """
    from harvester_plugins.batch_broker import BrokerBatchBackend

    return BrokerBatchBackend(site)


def batch_check(backend: Any) -> Any:
    """The backend's gate before a getJob: its fast ``probe`` when it has one, else ``preflight``; None if neither."""
    return getattr(backend, "probe", None) or getattr(backend, "preflight", None)


class BackgroundPreflight:
    """The backend's batch check (:func:`batch_check`), started before the rest of the daemon is up.

    Why: the daemon's own start-up (PanDA client, journal, recovery) takes a few tenths
    of a second, and the check (a native query of the batch system; the broker's start
    and radical.saga's job service open on a thread of their own) as long: side by side,
    the first getJob comes that much earlier.  Its outcome is read by the daemon's first
    :meth:`MultiJobDaemon.preflight`; nothing is fetched before that, so a batch system
    that does not answer still costs no job.
    """

    def __init__(self, backend: Any) -> None:
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        check = batch_check(backend)
        if check is not None:
            self._thread = threading.Thread(target=self._run, args=(check,), name="preflight", daemon=True)
            self._thread.start()

    def _run(self, check: Any) -> None:
        try:
            check()
        except BaseException as exc:  # handed to the daemon's thread by result()
            self._error = exc

    def result(self) -> None:
        """Wait for the check (the backend bounds it); raise what it raised."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
