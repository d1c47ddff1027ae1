"""compass_pilot.failures: which exception means which exit code, and how it reads."""

from __future__ import annotations

import socket

import pytest
import requests

from compass_pilot.credentials import ProxyError
from compass_pilot.errors import ConfigError, ServerError
from compass_pilot.exitcodes import ExitCode, ExitError, table_text
from compass_pilot.failures import explain, install_hint, ordinal, short_reason, unexpected
from compass_pilot.panda.tasks import TaskError


@pytest.mark.parametrize(
    ("exc", "code", "words"),
    [
        (ConfigError("site.yaml: bad"), ExitCode.USAGE, "configuration error: site.yaml: bad"),
        (TaskError("task: x"), ExitCode.USAGE, "task file: task: x"),
        (ProxyError("/p: proxy file not found"), ExitCode.NO_VALID_PROXY, "voms-proxy-init"),
        (ServerError("getJob: down"), ExitCode.SERVER_UNREACHABLE, "unreachable: getJob: down"),
        (ServerError("getJob: 403", status=403, retriable=False), ExitCode.SERVER_REFUSED, "refused"),
        (ServerError("getJob: StatusCode 60", status=60, retriable=False), ExitCode.SERVER_REFUSED, "refused"),
        (ModuleNotFoundError("x", name="pymysql"), ExitCode.MISSING_DEPENDENCY, "pip install 'compass-pilot[mysql]'"),
        (ModuleNotFoundError("x", name="radical.saga"), ExitCode.MISSING_DEPENDENCY, "compass-pilot[saga]"),
        (ExitError(ExitCode.BLACK_HOLE, "breaker open"), ExitCode.BLACK_HOLE, "breaker open"),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED_SIGINT, "interrupted"),
    ],
)
def test_expected_failures_have_their_code_and_one_line(exc: BaseException, code: ExitCode, words: str) -> None:
    explained = explain(exc)
    assert explained is not None
    assert explained[0] == code and words in explained[1] and "\n" not in explained[1]


def test_a_bug_is_not_explained_away() -> None:
    assert explain(ZeroDivisionError("division by zero")) is None
    line = unexpected(ZeroDivisionError("division by zero"))
    assert line == "unexpected error: ZeroDivisionError: division by zero (run with --debug for the traceback)"


def test_unknown_module_gets_its_own_name() -> None:
    assert install_hint("yaml") == "pip install yaml"
    assert install_hint("mpi4py.MPI") == "pip install 'compass-pilot[mpi]'"


def test_short_reason_of_a_real_refused_connection() -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(requests.ConnectionError) as caught:
            requests.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert short_reason(caught.value) == "connection refused"


def test_ordinals() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st", "111th",
    ]  # fmt: skip


def test_exit_code_numbers_are_distinct_and_in_the_table() -> None:
    numbers = [int(c) for c in ExitCode]
    assert len(numbers) == len(set(numbers))
    text = table_text()
    for code in ExitCode:
        assert f"{int(code):>3}  " in text


def test_readme_has_the_exit_code_table() -> None:
    from pathlib import Path

    from compass_pilot.exitcodes import markdown_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert markdown_table() in readme  # regenerate the README's table from exitcodes.py when this fails
