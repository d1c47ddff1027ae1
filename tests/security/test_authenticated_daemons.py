"""The MOM-node daemon works against a dispatcher that requires authentication: once with
an X509 proxy (production DN, verified against the CA), once with a signed token.  Every
job is bound to the identity that fetched it and finishes."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import calibdb
from compass_pilot.config import load_site_config
from compass_pilot.demo.rawdata import make_production_input
from compass_pilot.modes.multijob import MultiJobDaemon, make_backend
from compass_pilot.panda.client import PandaClient
from compass_pilot.panda.dispatcher import submit_task
from tests.security.conftest import PILOT_DN, Secured
from tests.tasks import reco_task


@pytest.mark.parametrize("credential", ["x509 proxy", "token"])
def test_daemon_authenticates_and_finishes_its_jobs(
    secured: Secured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, credential: str
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RADICAL_BASE", str(tmp_path / "radical"))
    monkeypatch.delenv("X509_USER_PROXY", raising=False)
    (tmp_path / "home").mkdir()
    chunks = make_production_input(tmp_path / "castor", 2016, "W14", {275678: 3}, n_events=10)
    submit_task(secured.db, reco_task([c.raw_path for c in chunks], name="auth"))
    site = load_site_config(None)
    site.panda.url = secured.url
    site.panda.ca_dir = str(secured.pki.ca)
    site.panda.backoff = 0.1
    if credential == "token":
        site.panda.token_file = str(secured.token_file("pilot-a", tmp_path))
        owner = "pilot-a"
    else:
        site.panda.x509_proxy = str(secured.pki.proxy)
        owner = PILOT_DN
    site.storage.input_root = str(tmp_path / "castor")
    site.storage.output_root = str(tmp_path / "eos")
    site.calibdb.snapshot = str(calibdb.demo_snapshot("sqlite", tmp_path / "calib"))
    site.calibdb.scratch_dir = str(tmp_path / "scratch")
    site.hpc.shared_dir = str(tmp_path / "hpc")
    site.hpc.fake_nodes = True
    site.hpc.slots_per_node = 4
    site.hpc.max_nodes = 1
    site.hpc.max_jobs = 4
    site.hpc.poll_interval = 1
    site.hpc.heartbeat_interval = 2
    client = PandaClient(site.panda, site.site)
    daemon = MultiJobDaemon(site, client, make_backend(site))
    thread = threading.Thread(target=daemon.run, kwargs={"once": True}, daemon=True)
    thread.start()
    thread.join(180)
    try:
        if thread.is_alive():
            daemon.terminate()
            thread.join(30)
            pytest.fail("daemon did not finish in time")
    finally:
        client.close()
    jobs = secured.dispatcher.store.query("SELECT status, owner FROM jobs")
    assert [(j["status"], j["owner"]) for j in jobs] == [("finished", owner)] * 3
    labels = {u["auth"] for u in secured.dispatcher.updates() if u["accepted"]}
    assert labels == {f"{'token' if credential == 'token' else 'x509'}:{owner}"}
