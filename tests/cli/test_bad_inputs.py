"""Every bad input an operator can give: one line on stderr naming the thing and the fix, its own exit code.

Each case runs the real ``compass-pilot`` process, as a site admin would, and checks the
last stderr line, the exit code, and that no traceback leaked (``--debug`` shows one).
"""

from __future__ import annotations

import http.server
import re
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from compass_pilot.exitcodes import ExitCode
from tests.cli.conftest import REPO, Outcome, run_cli

TASK = "name: t\nprod: P09\nyear: 2016\nperiod: W14\njob_type: reco\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def plain_http_server() -> Iterator[int]:
    """An http (not https) server, to point an https:// URL at."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _site(tmp_path: Path, text: str, name: str = "site.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _quick_site(tmp_path: Path) -> str:
    """Few, fast retries: the dead-server cases end in about a second."""
    return _site(tmp_path, f"site:\n  workdir: {tmp_path}/work\npanda:\n  retries: 2\n  backoff: 0.1\n")


def _assert_one_line(out: Outcome, code: int, *words: str) -> None:
    assert out.rc == code, out.stderr
    assert not out.has_traceback, out.stderr
    for word in words:
        assert word in out.last_line, out.last_line


def test_dead_url(tmp_path: Path) -> None:
    port = _free_port()
    out = run_cli("grid", "--site-config", _quick_site(tmp_path), "--url", f"http://127.0.0.1:{port}", cwd=tmp_path)
    _assert_one_line(out, ExitCode.SERVER_UNREACHABLE, "PanDA server unreachable", f"127.0.0.1:{port}", "refused")
    # one short line per retry, whichever dialect the client speaks (legacy getJob, v1 acquire_jobs)
    assert re.search(r"(getJob|acquire_jobs): 1st retry in 0 s: connection refused\n", out.stderr), out.stderr


def test_https_to_an_http_server(tmp_path: Path, plain_http_server: int) -> None:
    url = f"https://127.0.0.1:{plain_http_server}"
    out = run_cli("grid", "--site-config", _quick_site(tmp_path), "--url", url, cwd=tmp_path)
    _assert_one_line(out, ExitCode.SERVER_UNREACHABLE, "does not speak TLS", "http://")


def test_url_that_is_not_a_url(tmp_path: Path) -> None:
    _assert_one_line(run_cli("grid", "--url", "not-a-url", cwd=tmp_path), ExitCode.USAGE, "--url", "not-a-url")
    site = _site(tmp_path, "panda:\n  url: not-a-url\n")
    _assert_one_line(run_cli("grid", "--site-config", site, cwd=tmp_path), ExitCode.USAGE, "panda.url", "not-a-url")


def test_no_jobs_is_pilot3s_20(tmp_path: Path) -> None:
    from compass_pilot.panda.dispatcher import Dispatcher

    dispatcher = Dispatcher(str(tmp_path / "panda.sqlite"), port=0).start()
    try:
        out = run_cli("grid", "--site-config", _quick_site(tmp_path), "--url", dispatcher.url, cwd=tmp_path)
    finally:
        dispatcher.stop()
    _assert_one_line(out, ExitCode.NO_JOBS, "no jobs")


def test_missing_x509_proxy(tmp_path: Path) -> None:
    proxy = tmp_path / "x509up_u0"
    out = run_cli("grid", "--site-config", _quick_site(tmp_path), cwd=tmp_path, env={"X509_USER_PROXY": str(proxy)})
    _assert_one_line(out, ExitCode.NO_VALID_PROXY, str(proxy), "not found", "voms-proxy-init")
    assert len(out.stderr.strip().splitlines()) <= 2  # the preflight log line and the one line


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["grid", "--max-jobs", "-1"], ["--max-jobs", "negative"]),
        (["--log-level", "LOUD", "grid"], ["--log-level", "LOUD"]),
        (["grid", "--heartbeat", "0.01"], ["--heartbeat", "busy"]),
    ],
)
def test_bad_arguments(tmp_path: Path, argv: list[str], words: list[str]) -> None:
    out = run_cli(*argv, cwd=tmp_path)
    _assert_one_line(out, ExitCode.USAGE, *words, "--help")
    assert len(out.stderr.strip().splitlines()) == 1  # no usage block: --help is for that


def test_dispatcher_db_in_a_missing_dir(tmp_path: Path) -> None:
    out = run_cli("dispatcher", "--db", str(tmp_path / "nodir/panda.sqlite"), "--port", "0", cwd=tmp_path)
    _assert_one_line(out, ExitCode.USAGE, "--db", "nodir", "does not exist")


def test_dispatcher_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run_cli("dispatcher", "--db", str(tmp_path / "p.sqlite"), "--port", str(port), cwd=tmp_path)
    _assert_one_line(out, ExitCode.USAGE, f"--port {port}", "already in use")


def test_dispatcher_missing_cert(tmp_path: Path) -> None:
    cert = tmp_path / "hostcert.pem"
    out = run_cli("dispatcher", "--db", str(tmp_path / "p.sqlite"), "--port", "0", "--cert", str(cert), cwd=tmp_path)
    _assert_one_line(out, ExitCode.USAGE, f"--cert {cert}", "no such file")


def test_calibdb_snapshot_without_pymysql(tmp_path: Path) -> None:
    """pymysql hidden from the import system, as on a node installed without the ``mysql`` extra."""
    import subprocess

    code = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'pymysql':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from compass_pilot.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "calibdb", "snapshot", "--out", str(tmp_path / "c.tar"), "--backend", "mariadb"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(tmp_path)},
        timeout=120,
    )
    _assert_one_line(Outcome(done.returncode, done.stdout, done.stderr), ExitCode.MISSING_DEPENDENCY, "pymysql",
                     "pip install 'compass-pilot[mysql]'")  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("runs: {abc: [1]}\n", ["runs", "'abc'", "not a run number"]),
        ("runs: {275678: [1]}\ninject: [a]\n", ["'inject'", "must map raw file names"]),
    ],
)
def test_submit_bad_task(tmp_path: Path, extra: str, words: list[str]) -> None:
    task = _site(tmp_path, TASK + extra, "task.yaml")
    (tmp_path / "panda.sqlite").touch()
    out = run_cli("submit", task, "--db", str(tmp_path / "panda.sqlite"), cwd=tmp_path)
    _assert_one_line(out, ExitCode.USAGE, "task.yaml", *words)
    assert out.stdout == ""  # errors on stderr, not mixed into output a script parses


def test_status_with_malformed_daemon_state(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "daemon_state.json").write_text('{"pid": 12')
    site = _site(tmp_path, f"hpc:\n  shared_dir: {shared}\n")
    _assert_one_line(run_cli("status", "--site", site, cwd=tmp_path), ExitCode.UNHEALTHY, "daemon_state.json",
                     "not valid JSON")  # fmt: skip


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("hpc:\n  batch_url: lsf://nowhere\n", ["hpc.batch_url", "lsf://nowhere", "slurm://"]),
        ("site:\n  workdir: ${NO_SUCH_VAR_H14}/work\n", ["site.workdir", "${NO_SUCH_VAR_H14}", "not set"]),
        ("", ["the file is empty", "give no site config"]),
        ("panda:\n  url: ftp://panda.cern.ch\n", ["panda.url", "ftp://"]),
        ("storage:\n  input_root: root://eos//castor\n", ["storage.input_root", "copytool: xrootd"]),
        ("grid:\n  looping_timeout: -5\n", ["grid.looping_timeout"]),
    ],
)
def test_site_config_refused_at_load(tmp_path: Path, text: str, words: list[str]) -> None:
    site = _site(tmp_path, text)
    _assert_one_line(
        run_cli("grid", "--site-config", site, cwd=tmp_path), ExitCode.USAGE, "configuration error", *words
    )
    assert not list(tmp_path.glob("$*"))  # no directory literally named "${NO_SUCH_VAR…}"


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    out = run_cli("--debug", "dispatcher", "--db", str(tmp_path / "nodir/p.sqlite"), cwd=tmp_path)
    assert out.rc == ExitCode.USAGE and out.has_traceback and "does not exist" in out.last_line


def test_version_and_exit_code_table_in_help(tmp_path: Path) -> None:
    out = run_cli("--version", cwd=tmp_path)
    assert out.rc == 0 and out.stdout.startswith("compass-pilot ")
    helptext = run_cli("grid", "--help", cwd=tmp_path).stdout
    assert "exit codes:" in helptext and " 21  PanDA server unreachable" in helptext


def test_log_file_gets_the_lines(tmp_path: Path) -> None:
    log_file = tmp_path / "pilot.log"
    run_cli("grid", "--site-config", _quick_site(tmp_path), "--url", f"http://127.0.0.1:{_free_port()}", "--log-file",
            str(log_file), cwd=tmp_path)  # fmt: skip
    assert "1st retry" in log_file.read_text()
