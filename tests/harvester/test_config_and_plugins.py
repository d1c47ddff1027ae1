"""Site configs, the example Harvester queue config, the facade, the worker maker and the messenger."""

from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path

import pytest

import harvester_plugins
from compass_pilot.config import load_site_config
from compass_pilot.errors import ConfigError
from harvester_plugins import compat
from harvester_plugins.compat import WorkSpec, job_spec_from_panda
from harvester_plugins.messenger import SharedFileMessenger
from tests.core.jobdicts import reco_job_dict

ROOT = Path(__file__).resolve().parents[2]
SITE_FILES = sorted((ROOT / "site_configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SITE_FILES, ids=lambda p: p.name)
def test_every_site_config_loads(path: Path) -> None:
    config = load_site_config(path)
    assert config.hpc.max_jobs <= config.hpc.max_nodes * config.hpc.slots_per_node
    harvester_plugins.saga_backend.batch_kind(config.hpc.batch_url)


def test_bluewaters_facts() -> None:
    bw = load_site_config(ROOT / "site_configs" / "bluewaters.yaml")
    assert (bw.hpc.max_nodes, bw.hpc.slots_per_node, bw.hpc.max_jobs, bw.hpc.launcher) == (16, 32, 512, "aprun")
    assert {q.name: q.max_walltime for q in bw.hpc.queues} == {"long": 18 * 3600, "medium": 6 * 3600, "short": 7200}
    assert bw.calibdb.backend == "mariadb" and bw.calibdb.scratch_dir.startswith("/tmp")
    assert bw.storage.copytool == "local"
    cern = load_site_config(ROOT / "site_configs" / "cern_condor.yaml")
    assert cern.storage.copytool == "xrootd" and cern.storage.input_root.startswith("root://")
    assert cern.hpc.batch_url.startswith("condor://")
    assert load_site_config(ROOT / "site_configs" / "jinr_pbs.yaml").hpc.batch_url.startswith("torque://")


def test_bad_key_and_wrong_type_name_file_and_key(tmp_path: Path) -> None:
    text = (ROOT / "site_configs" / "bluewaters.yaml").read_text()
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text(text.replace("  launcher: aprun", "  lancher: aprun"))
    with pytest.raises(ConfigError, match=r"bad_key\.yaml.*hpc\.lancher"):
        load_site_config(bad_key)
    bad_type = tmp_path / "bad_type.yaml"
    bad_type.write_text(text.replace("max_nodes: 16", "max_nodes: sixteen"))
    with pytest.raises(ConfigError, match=r"bad_type\.yaml.*hpc\.max_nodes.*integer"):
        load_site_config(bad_type)


def test_example_queue_config_builds_our_plugins_like_plugin_factory() -> None:
    data = json.loads((ROOT / "docs" / "panda_queueconfig.json").read_text())
    ((name, queue),) = data.items()
    assert queue["mapType"] == "ManyToOne"
    sections = compat.plugin_sections(name, queue)
    assert set(compat.PLUGIN_SECTIONS) <= set(sections)
    for section in ("submitter", "monitor", "sweeper", "workerMaker", "messenger", "preparator", "stager"):
        conf = sections[section]
        assert conf["module"].startswith("harvester_plugins.")
        first, second = compat.get_plugin(conf), compat.get_plugin(conf)
        assert first is not second  # a new instance per call, as Harvester does
        assert first.queueName == name and first.siteName == name
        assert first.batchURL == "pbspro://localhost"  # from the queue's "common" keys
    maker = compat.get_plugin(sections["workerMaker"])
    assert maker.get_num_jobs_per_worker(1) == 512
    assert compat.get_plugin(sections["submitter"]).launcher == "aprun"
    for section in ("preparator", "stager"):  # our copytools, not Harvester's dummies
        assert sections[section]["siteConfig"].endswith("bluewaters.yaml")
    broken = dict(queue)
    del broken["sweeper"]
    with pytest.raises(ValueError, match="sweeper"):
        compat.plugin_sections(name, broken)


def test_facade_builds_fresh_plugins_from_site() -> None:
    site = load_site_config(ROOT / "site_configs" / "local.yaml")
    a, b = harvester_plugins.plugins_for_site(site), harvester_plugins.plugins_for_site(site)
    assert a.submitter is not b.submitter
    assert a.queue_config.mapType == "ManyToOne"
    assert a.monitor.batchURL == site.hpc.batch_url
    assert a.maker.get_num_jobs_per_worker(1) == 64


def _jobs(n: int, job_type: str = "reco", start: int = 1000) -> list:
    return [job_spec_from_panda(reco_job_dict(start + i, processingType=job_type)) for i in range(n)]


def test_worker_maker_sizes_from_slots_and_queue() -> None:
    site = load_site_config(ROOT / "site_configs" / "bluewaters.yaml")
    qdict = harvester_plugins.queue_config_for_site(site)
    sections = compat.plugin_sections("BW", qdict)
    qc = compat.queue_config_from_dict("BW", qdict)
    maker = compat.get_plugin(sections["workerMaker"])
    ws = maker.make_worker(_jobs(40), qc, "managed", "MCORE")
    assert ws.mapType == WorkSpec.MT_MultiJobs
    assert ws.workParams["nodes"] == 2 and ws.workParams["slotsPerNode"] == 32 and ws.nCore == 64
    assert ws.workParams["queue"] == "long"
    jobs = _jobs(40)
    ws.set_jobspec_list(jobs)
    ws.set_num_jobs_with_list()  # Harvester's submitter adds the chunk's length: nJobs counted once
    assert ws.nJobs == 40
    merge = compat.get_plugin(sections["workerMaker"]).make_worker(_jobs(3, "merge_hist"), qc, "managed", "MCORE")
    assert merge.workParams["queue"] == "short" and merge.workParams["nodes"] == 1
    mixed = compat.get_plugin(sections["workerMaker"]).make_worker(
        _jobs(2, "merge_hist") + _jobs(2, "reco", 2000), qc, "managed", "MCORE"
    )
    assert mixed.workParams["queue"] == "long" and len(mixed.workParams["pandaIDs"]) == 4
    assert compat.get_plugin(sections["workerMaker"]).make_worker(_jobs(513), qc, "managed", "MCORE") is None
    assert compat.get_plugin(sections["workerMaker"]).make_worker([], qc, "managed", "MCORE") is None


def test_messenger_shared_file_contract(tmp_path: Path) -> None:
    ws = WorkSpec()
    ws.workerID = 77
    ws.mapType = WorkSpec.MT_MultiJobs
    ws.accessPoint = str(tmp_path / "${workerID}")
    jobs = _jobs(2)
    ws.set_jobspec_list(jobs)
    m = SharedFileMessenger(accessPoint=ws.accessPoint)
    assert m.setup_access_points([ws]) is True
    assert m.feed_jobs(ws, jobs) is True
    ap = tmp_path / "77"
    data = json.loads((ap / "1000" / "HPCJobs.json").read_text())
    assert data["1000"]["PandaID"] == 1000
    assert json.loads((ap / "worker_pandaids.json").read_text()) == [1000, 1001]
    assert SharedFileMessenger().get_panda_ids(ws) == [1000, 1001]
    (ap / "1000" / "worker_attributes.json").write_text(json.dumps({"jobStatus": "finished"}))
    (ap / "1000" / "jobReport.json").write_text(json.dumps({"nEvents": 5}))
    attrs = SharedFileMessenger().get_work_attributes(ws)
    assert attrs[1000] == {"jobStatus": "finished", "metaData": {"nEvents": 5}} and attrs[1001] == {}
    out = ap / "1000" / "mDST.root"
    out.write_bytes(b"x" * 10)
    (ap / "1000" / "event_status.dump.json").write_text(json.dumps({"1000": [{"path": str(out), "type": "output"}]}))
    files = SharedFileMessenger().get_files_to_stage_out(ws)
    (entry,) = files[1000]["mDST.root"]
    assert entry["fsize"] == 10 and entry["chksum"] == f"{zlib.adler32(b'x' * 10):08x}" and entry["isZip"] == 0
    assert (ap / "1000" / "event_status.dump.json.read").exists()
    assert SharedFileMessenger().job_requested(ws) is False
    (ap / "worker_requestjob.json").write_text(json.dumps({"nJobs": 3}))
    assert SharedFileMessenger().job_requested(ws) == 3
    assert SharedFileMessenger().kill_requested(ws) is False
    (ap / "kill_worker.json").write_text("{}")
    assert SharedFileMessenger().kill_requested(ws) is True
    hb = ap / "worker_heartbeat.json"
    hb.write_text("{}")
    assert SharedFileMessenger().is_alive(ws, 10) is True
    os.utime(hb, (time.time() - 3600, time.time() - 3600))
    assert SharedFileMessenger().is_alive(ws, 10) is False
    single = WorkSpec()
    single.mapType = WorkSpec.MT_OneToOne
    assert SharedFileMessenger().job_spec_file(single) == "pandaJobData.out"
    assert SharedFileMessenger().clean_up(ws) == (True, "") and not ap.exists()
