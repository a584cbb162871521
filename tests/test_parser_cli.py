"""python -m parser_api: the classification as JSON, for people and scripts."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from parser_api.__main__ import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    """Run the tool in-process; its exit status and parsed output."""
    status = main(list(argv))
    return status, json.loads(capsys.readouterr().out)


def test_classifies_the_argument(capsys: pytest.CaptureFixture[str]) -> None:
    status, output = run(capsys, "SELECT * FROM t WHERE id = 1")
    assert status == 0
    assert isinstance(output, dict)
    assert output["route"] == "read"
    assert output["reads_tables"] == ["t"]
    assert output["cacheable"] is True


def test_reads_standard_input(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("BEGIN; INSERT INTO t VALUES (1); COMMIT\n"))
    status, output = run(capsys, "--compact")
    assert status == 0
    assert isinstance(output, dict)
    assert output["route"] == "write"
    assert [c["action"] for c in output["transaction"]] == ["begin", "commit"]


def test_tokens_and_split(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--tokens", "SELECT 1") == (
        0,
        [
            {"kind": "keyword", "start": 0, "end": 6, "text": "SELECT", "name": "SELECT"},
            {"kind": "literal", "start": 7, "end": 8, "text": "1", "name": "ICONST"},
        ],
    )
    assert run(capsys, "--split", "SELECT 1; SELECT 2") == (
        0,
        [{"start": 0, "end": 8, "text": "SELECT 1"}, {"start": 10, "end": 18, "text": "SELECT 2"}],
    )


def test_parse_error_is_json_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "SELEC 1") == (
        1,
        {"error": {"message": 'syntax error at or near "SELEC"', "position": 1,
                   "sqlstate": "42601"}},
    )


def test_runs_as_a_module() -> None:
    """The real command line, once."""
    result = subprocess.run(
        [sys.executable, "-m", "parser_api", "--compact", "LISTEN jobs"],
        capture_output=True, text=True, check=True,
    )
    output = json.loads(result.stdout)
    assert output["route"] == "write"
    assert output["session_effects"] == [{"kind": "listen", "name": "jobs"}]
