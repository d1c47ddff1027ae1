"""hpc.jobset: round trip, atomic write, and clear errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compass_pilot.config import HPCSection, SiteConfig, config_to_dict
from hpc.jobset import read_jobset, write_jobset
from hpc.packing import plan_submissions
from tests.hpc.conftest import shell_job


def _write(tmp_path: Path, n: int = 5) -> Path:
    (sub,) = plan_submissions([shell_job(10 + i, priority=i) for i in range(n)], HPCSection(slots_per_node=2))
    site = SiteConfig()
    site.calibdb.backend = "mariadb"
    workdirs = {j.panda_id: str(tmp_path / f"PandaJob_{j.panda_id}_1") for j in sub.jobs}
    return write_jobset(tmp_path / "jobset.json", sub, config_to_dict(site), workdirs, str(tmp_path))


def test_round_trip(tmp_path: Path) -> None:
    js = read_jobset(_write(tmp_path))
    assert (js.nodes, js.slots_per_node, js.queue) == (3, 2, "long")
    assert js.reports_dir == str(tmp_path / "reports")
    assert js.calibdb.backend == "mariadb" and js.grid.payload_grace == 60.0
    # highest priority first: 14, 13 on node 0; 12, 11 on node 1; 10 on node 2
    assert [[(j.panda_id, j.slot) for j in js.jobs_of(n)] for n in range(3)] == [
        [(14, 0), (13, 1)],
        [(12, 0), (11, 1)],
        [(10, 0)],
    ]
    assert js.jobs_of(0)[0].workdir == str(tmp_path / "PandaJob_14_1")
    assert js.jobs_of(0)[0].job.transformation == "sh"
    assert not list(tmp_path.glob(".jobset.json.*"))  # no temp file left behind


def test_durable_outcomes_round_trip_and_default(tmp_path: Path) -> None:
    """The daemon's job sets say its agents need no fsync; an older file without the key means durable."""
    (sub,) = plan_submissions([shell_job(1)], HPCSection())
    args = (sub, config_to_dict(SiteConfig()), {1: str(tmp_path / "w")}, str(tmp_path))
    assert read_jobset(write_jobset(tmp_path / "a.json", *args)).durable_outcomes is True
    assert read_jobset(write_jobset(tmp_path / "b.json", *args, durable_outcomes=False)).durable_outcomes is False
    data = json.loads((tmp_path / "b.json").read_text())
    del data["durable_outcomes"]
    (tmp_path / "b.json").write_text(json.dumps(data))
    assert read_jobset(tmp_path / "b.json").durable_outcomes is True


def test_missing_workdir_is_refused(tmp_path: Path) -> None:
    (sub,) = plan_submissions([shell_job(1), shell_job(2)], HPCSection())
    with pytest.raises(ValueError, match=r"no work dir for PandaID\(s\) \[2\]"):
        write_jobset(tmp_path / "j.json", sub, config_to_dict(SiteConfig()), {1: "/x"}, str(tmp_path))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.pop("reports_dir"), "missing key 'reports_dir'"),
        (lambda d: d.update(version=9), "version"),
        (lambda d: d["calibdb"].update(backend=3), "calibdb.backend"),
        (lambda d: d["calibdb"].update(colour="red"), "unknown key 'calibdb.colour'"),
        (lambda d: d["node_jobs"][0]["jobs"][0].update(slot=7), "slot 7 outside"),
        (lambda d: d["node_jobs"][1]["jobs"].append(d["node_jobs"][0]["jobs"][0]), "appears twice"),
        (lambda d: d["node_jobs"][0]["jobs"][0]["job"].pop("transformation"), "'transformation'"),
        (lambda d: d["node_jobs"][0]["jobs"][0].update(panda_id=99), "differs"),
        (lambda d: d.update(durable_outcomes="no"), "durable_outcomes"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, mutate, match: str) -> None:
    path = _write(tmp_path)
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match):
        read_jobset(path)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read job set"):
        read_jobset(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_jobset(tmp_path / "bad.json")


def test_a_node_reads_only_its_own_specs_and_a_bad_spec_stops_only_its_node(tmp_path: Path) -> None:
    path = _write(tmp_path)
    data = json.loads(path.read_text())
    data["node_jobs"][0]["jobs"][0]["job"].pop("transformation")  # node 0's first spec is broken
    path.write_text(json.dumps(data))
    mine = read_jobset(path, only_node=1)
    assert [j.panda_id for j in mine.jobs_of(1)] == [12, 11] and mine.jobs_of(1)[0].job.panda_id == 12
    assert mine.jobs_of(0) == [] and mine.jobs_of(2) == []  # other nodes' specs not parsed nor kept
    with pytest.raises(ValueError, match="'transformation'"):
        read_jobset(path, only_node=0)
    with pytest.raises(ValueError, match="'transformation'"):
        read_jobset(path)
    # structure and uniqueness are still checked across every node
    data["node_jobs"][2]["jobs"].append(dict(data["node_jobs"][1]["jobs"][0], slot=1))
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="appears twice"):
        read_jobset(path, only_node=1)
