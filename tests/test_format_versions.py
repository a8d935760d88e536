"""Today's formats are version 1, and a file of another version is refused in one line naming it.

Until the first release no migration code exists (CHANGELOG.md, "How formats change"): a state file
or a journal of another version is refused, never upgraded in place. The envelope, the adapter card
and the member record have their own tests beside their modules.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from confide import cli
from confide.platform.coordinator import STATE_FORMAT_VERSION, StateFormatError, StateStore
from confide.platform.driver import JOURNAL_VERSION, AgentError, Journal

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _state_file_of_version(path: Path, version: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE receipts (round INTEGER, institution TEXT, envelope_sha256 TEXT, signature TEXT)")
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()


def test_a_new_state_file_is_created_at_version_1_and_opens_again(tmp_path):
    path = tmp_path / "state.sqlite"
    StateStore(path).close()
    assert STATE_FORMAT_VERSION == 1
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 1
    again = StateStore(path)
    assert again.receipts() == []
    again.close()


@pytest.mark.parametrize("version", [0, 2, 3])
def test_a_state_file_of_another_version_is_refused_in_one_line_naming_it(tmp_path, version):
    path = tmp_path / "state.sqlite"
    _state_file_of_version(path, version)
    with pytest.raises(StateFormatError) as err:
        StateStore(path)
    assert err.value.lines() == [str(err.value)]
    assert str(err.value).startswith(f"{path} has state format {version}; this confide reads format 1")
    assert "fresh directory" in str(err.value)
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(receipts)")]
    assert columns == ["round", "institution", "envelope_sha256", "signature"]  # left as it was


def test_a_file_that_is_not_sqlite_is_refused_as_state(tmp_path):
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"not a database, " * 100)
    with pytest.raises(StateFormatError, match="not a coordinator state file"):
        StateStore(path)


def test_the_coordinator_command_refuses_an_old_state_directory_with_exit_2_and_one_line(tmp_path):
    state = tmp_path / "state"
    _state_file_of_version(state / "state.sqlite", 3)
    result = CliRunner().invoke(cli.app, ["coordinator", str(EXAMPLES / "federation.yaml"), "--state", str(state),
                                          "--insecure", "--port", "1"], prog_name="confide")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "state.sqlite has state format 3" in result.output and "--state" in result.output


def test_a_journal_is_written_at_version_1_and_one_of_another_version_is_refused_naming_it(tmp_path):
    path = tmp_path / "agent.json"
    journal = Journal(path)
    journal.data["coordinator_signing_key"] = "a" * 44
    journal.save()
    assert JOURNAL_VERSION == 1 and json.loads(path.read_text())["version"] == 1
    assert Journal(path).data["coordinator_signing_key"] == "a" * 44
    for version in (None, 2, 3):
        stored = json.loads(path.read_text())
        if version is None:
            del stored["version"]
        else:
            stored["version"] = version
        other = tmp_path / f"agent-{version}.json"
        other.write_text(json.dumps(stored))
        with pytest.raises(AgentError) as err:
            Journal(other)
        assert err.value.lines() == [str(err.value)]
        assert str(err.value).startswith(f"{other} has journal format {version!r}; this confide reads format 1")


def test_an_unreadable_journal_is_refused_naming_it(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text("{not json")
    with pytest.raises(AgentError, match=f"{path}: unreadable journal"):
        Journal(path)
