"""The server step (FedAvgM) every member applies to a round's decrypted average, and its durable state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from confide.aggregation.envelope import decrypt_sum
from confide.aggregation.keys import PublicContext
from confide.platform.member import Member
from confide.platform.member.server_step import (
    ServerState,
    ServerStateError,
    apply_average,
    load_state,
    state_array,
)
from confide.platform.secure_sum import unmask
from confide.policies.federation import ServerUpdate
from tests.platform.federation_kit import install_directly, load_files, make_federation_files, summed

FEDAVG = ServerUpdate(momentum=0.0, learning_rate=1.0)


def _vectors(count: int, size: int = 50) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.normal(size=size) for _ in range(count)]


def test_no_momentum_and_unit_rate_is_fedavg_to_the_last_bit():
    start, average = _vectors(2)
    after = apply_average(FEDAVG, ServerState.initial(start), average)
    assert np.array_equal(after.adapter, start + average)


def test_momentum_carries_earlier_averages_into_later_rounds():
    settings = ServerUpdate(momentum=0.6, learning_rate=0.5)
    start, *averages = _vectors(4)
    state = ServerState.initial(start)
    for average in averages:
        state = apply_average(settings, state, average)
    # The closed form: round j moves by lr * sum_{i<=j} momentum^(j-i) * average_i.
    expected = start.copy()
    for j in range(len(averages)):
        expected += settings.learning_rate * sum(settings.momentum ** (j - i) * averages[i] for i in range(j + 1))
    np.testing.assert_allclose(state.adapter, expected, rtol=0, atol=1e-12)
    fedavg = start + sum(averages)
    assert not np.allclose(state.adapter, fedavg)


def test_a_saved_state_reads_back_as_it_was(tmp_path):
    settings = ServerUpdate(momentum=0.7)
    state = apply_average(settings, ServerState.initial(_vectors(1)[0]), _vectors(2)[1])
    read = load_state(settings, state_array(settings, state), tmp_path / "adapter-r1.npy")
    assert np.array_equal(read.adapter, state.adapter) and np.array_equal(read.velocity, state.velocity)
    assert state_array(FEDAVG, state).ndim == 1  # FedAvg saves the adapter alone


def test_an_adapter_without_velocity_is_refused_when_the_federation_asks_for_momentum(tmp_path):
    path = tmp_path / "adapter-r3.npy"
    with pytest.raises(ServerStateError, match=r"adapter-r3.npy .*server_update.momentum 0.7") as raised:
        load_state(ServerUpdate(momentum=0.7), np.zeros(8), path)
    assert "set it back" in str(raised.value)
    assert np.array_equal(load_state(FEDAVG, np.ones(8), path).adapter, np.ones(8))
    with pytest.raises(ServerStateError, match="shape"):
        load_state(FEDAVG, np.zeros((3, 8)), path)


def _federation(root: Path, momentum: float):
    federation_path, institution_paths = make_federation_files(root, ids=("a", "b"), rounds=2)
    with open(federation_path, "a") as handle:
        handle.write(f"server_update: {{momentum: {momentum}}}\n")
    federation, institutions = load_files(federation_path, institution_paths)
    members = {p.institution_id: Member(federation, p) for p in institutions}
    install_directly(members)
    return federation, institutions, members


def _round_total(members: dict[str, Member], round_index: int) -> tuple:
    context = PublicContext.from_bytes(members["a"].secret.public_context().to_bytes())
    return summed(context, [m.take_part(round_index) for m in members.values()], members)


@pytest.mark.integration  # two members, two real DP rounds with calibrated noise: seconds, not milliseconds
def test_a_restarted_member_keeps_the_velocity_and_stays_identical_to_the_others(tmp_path):
    federation, institutions, members = _federation(tmp_path, momentum=0.5)
    a, b = members["a"], members["b"]
    start = a.server_state.adapter.copy()
    first = _round_total(members, 1)
    for member in (a, b):
        assert member.apply_sum(1, *first).kind == "applied"
    second = _round_total(members, 2)
    a = Member(federation, institutions[0])  # a restart between rounds: the velocity comes from the file
    for member in (a, b):
        assert member.apply_sum(2, *second).kind == "applied"
    average_1, average_2 = (decrypt_sum(a.secret, total, a.layout.hash, unmask=unmask(
        federation, a.roster, a.secret.key_id, index, list(evidence.statements), list(evidence.reveals))[1]).average
        for index, (total, evidence) in ((1, first), (2, second)))
    expected = (start + average_1) + (0.5 * average_1 + average_2)
    saved = [np.load(m.store.dir / "adapter-r2.npy") for m in (a, b)]
    assert saved[0].shape == (2, start.size)
    assert np.array_equal(saved[0], saved[1])
    np.testing.assert_array_equal(saved[0][0], expected)
    assert not (a.store.dir / "adapter-r1.npy").exists()  # the round-1 state is dropped once round 2 is recorded
