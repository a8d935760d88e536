"""Release to the coordinator does not exist yet, so the federation file may not ask for it."""

import pytest
from typer.testing import CliRunner

from confide.cli import app
from confide.policies import PolicyError, load_federation
from tests.policies.conftest import EXAMPLES


def test_a_federation_asking_for_release_to_the_coordinator_is_refused_at_its_line(write, federation_text):
    path = write(federation_text + "release:\n  to_coordinator: true\n", "f.yaml")
    with pytest.raises(PolicyError) as info:
        load_federation(path)
    (problem,) = info.value.problems
    assert problem.field == "release.to_coordinator" and problem.line == len(federation_text.splitlines()) + 2
    assert "not available" in problem.message and "to_coordinator: false" in problem.hint


def test_the_release_counter_that_nothing_reads_is_refused(write, federation_text):
    path = write(federation_text + "release:\n  to_coordinator: false\n  max_releases_per_key: 1\n", "f.yaml")
    with pytest.raises(PolicyError) as info:
        load_federation(path)
    (problem,) = info.value.problems
    assert problem.field == "release.max_releases_per_key" and "no effect" in problem.message


def test_no_release_is_still_accepted(write, federation_text):
    allowed = load_federation(write(federation_text + "release:\n  to_coordinator: false\n"))
    assert allowed.release.to_coordinator is False
    assert load_federation(EXAMPLES / "federation.yaml").release.to_coordinator is False


def test_policy_check_exits_2_naming_file_and_line(write, federation_text):
    path = write(federation_text + "release:\n  to_coordinator: true\n", "f.yaml")
    result = CliRunner().invoke(app, ["policy", "check", str(path)])
    assert result.exit_code == 2
    assert f"{path}:{len(federation_text.splitlines()) + 2}" in result.output and "Traceback" not in result.output
