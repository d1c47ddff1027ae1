"""The node's calibration DB is private: checked dirs and state, a password, only connection keys."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pymysql
import pytest

import calibdb
from compass_pilot.errors import CalibDBError
from tests.calibdb.conftest import cfg, servers


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_instance_is_private_and_password_protected(snapshots: dict[str, Path], tmp_path: Path) -> None:
    db = calibdb.open_calibdb(cfg(snapshots["mariadb"], tmp_path))
    endpoint = db.start()
    try:
        assert _mode(db.dir) == 0o700 and os.stat(db.dir).st_uid == os.geteuid()
        assert _mode(db.dir / "state.json") == 0o600 and _mode(db.dir / "password") == 0o600
        sock_dir = Path(endpoint.socket).parent  # the instance dir, or a private one when its path is too long
        assert sock_dir in (db.dir, calibdb.backends.socket_path(db.dir).parent)
        assert _mode(sock_dir) == 0o700 and os.stat(sock_dir).st_uid == os.geteuid()
        password_file = endpoint.env["COMPASS_CALIB_PASSWORD_FILE"]
        password = Path(password_file).read_text().strip()
        assert len(password) >= 24 and password not in json.dumps(endpoint.to_dict())
        with pytest.raises(pymysql.err.OperationalError) as err:  # no password: refused
            pymysql.connect(unix_socket=endpoint.socket, user="root", connect_timeout=5).close()
        assert err.value.args[0] == 1045
        conn = calibdb.connect(endpoint.env)  # with the owner's password file: in
        assert len(calibdb.read_constants(conn, 275678)) == 10
        conn.close()
    finally:
        db.stop()
    assert servers(tmp_path) == []


def test_foreign_or_open_instance_dir_is_refused(snapshots: dict[str, Path], tmp_path: Path) -> None:
    db = calibdb.open_calibdb(cfg(snapshots["sqlite"], tmp_path, "sqlite"))
    db.dir.mkdir(mode=0o700)
    os.chown(db.dir, 65534, 65534)  # planted by another user
    with pytest.raises(CalibDBError, match="not ours alone") as err:
        db.start()
    assert err.value.code == 1244 and not (db.dir / "state.json").exists()
    os.chown(db.dir, os.geteuid(), os.getegid())
    os.chmod(db.dir, 0o777)  # ours, but anyone could have written into it
    with pytest.raises(CalibDBError, match="not ours alone"):
        calibdb.open_calibdb(cfg(snapshots["sqlite"], tmp_path, "sqlite")).start()
    os.rmdir(db.dir)
    db.dir.symlink_to(tmp_path)  # a link to somewhere else
    with pytest.raises(CalibDBError, match="not a directory"):
        calibdb.open_calibdb(cfg(snapshots["sqlite"], tmp_path, "sqlite")).start()


def _planted_state(db: calibdb.CalibDB, **env: str) -> Path:
    db.dir.mkdir(mode=0o700)
    marker = db.dir.parent / "PWNED"
    state = {
        "pid": None,
        "users": [],
        "endpoint": {
            "backend": "sqlite",
            "dsn": str(db.dir / "calib.sqlite"),
            "env": {"COMPASS_CALIB_BACKEND": "sqlite", "COMPASS_CALIB_DSN": str(db.dir / "calib.sqlite"), **env},
        },
    }
    (db.dir / "state.json").write_text(json.dumps(state))
    return marker


def test_planted_state_is_refused_not_joined(snapshots: dict[str, Path], tmp_path: Path) -> None:
    db = calibdb.open_calibdb(cfg(snapshots["sqlite"], tmp_path, "sqlite"))
    _planted_state(db, LD_PRELOAD="/tmp/evil.so", BASH_ENV="/tmp/evil.sh")
    with pytest.raises(CalibDBError, match="non-connection keys BASH_ENV, LD_PRELOAD"):
        db.start()
    assert db.endpoint is None
    shutil.rmtree(db.dir)
    _planted_state(db)
    os.chown(db.dir / "state.json", 65534, 65534)  # a state file someone else wrote
    with pytest.raises(CalibDBError, match="possibly planted"):
        calibdb.open_calibdb(cfg(snapshots["sqlite"], tmp_path, "sqlite")).start()
    os.chown(db.dir / "state.json", os.geteuid(), os.getegid())
    os.chmod(db.dir / "state.json", 0o666)
    with pytest.raises(CalibDBError, match="possibly planted"):
        calibdb.open_calibdb(cfg(snapshots["sqlite"], tmp_path, "sqlite")).start()


def test_state_pointing_outside_the_private_dir_is_refused(snapshots: dict[str, Path], tmp_path: Path) -> None:
    db = calibdb.open_calibdb(cfg(snapshots["sqlite"], tmp_path, "sqlite"))
    db.dir.mkdir(mode=0o700)
    elsewhere = str(tmp_path / "foreign.sqlite")
    state = {
        "pid": None,
        "endpoint": {"backend": "sqlite", "dsn": elsewhere, "env": {"COMPASS_CALIB_DSN": elsewhere}},
    }
    (db.dir / "state.json").write_text(json.dumps(state))
    with pytest.raises(CalibDBError, match="outside"):
        db.start()


def test_foreign_writable_scratch_root_is_refused(snapshots: dict[str, Path], tmp_path: Path) -> None:
    scratch = tmp_path / "shared"
    scratch.mkdir()
    os.chmod(scratch, 0o777)  # world-writable without the sticky bit: our dir could be swapped
    with pytest.raises(CalibDBError, match="another user could"):
        calibdb.open_calibdb(cfg(snapshots["sqlite"], scratch, "sqlite")).start()
    os.chmod(scratch, 0o1777)  # like /tmp: fine
    db = calibdb.open_calibdb(cfg(snapshots["sqlite"], scratch, "sqlite"))
    db.start()
    db.stop()
