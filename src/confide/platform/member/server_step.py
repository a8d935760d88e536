"""The server step, which every member applies to a round's decrypted average (FedAvgM).

Federated learning calls it the server update (the federation file's `server_update`), but the
coordinator never sees an average, so there is no server to run it: each member runs it on its own
copy, on the sum every key holder decrypts identically. The arithmetic is plain float64 numpy,
element by element, so equal inputs give bit-identical adapters on every member.

What a member keeps between rounds is a `ServerState`: the adapter and the velocity. It is saved as
one `.npy` file per round, written atomically, so a kill can never leave an adapter without the
velocity that produced it:

    1-D (P,)    the adapter alone: FedAvg (momentum 0);
    2-D (2, P)  row 0 the adapter, row 1 the velocity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from confide.errors import BadInput
from confide.policies.federation import ServerUpdate

__all__ = ["ServerState", "ServerStateError", "apply_average", "load_state", "state_array"]


class ServerStateError(BadInput):
    """A saved round state that this federation's server step cannot go on from."""


@dataclass(frozen=True)
class ServerState:
    """The shared adapter after a round and the velocity that moved it there (float64, flat)."""

    adapter: np.ndarray
    velocity: np.ndarray

    @classmethod
    def initial(cls, adapter: np.ndarray) -> "ServerState":
        """Round 0: the seeded adapter, at rest."""
        adapter = np.asarray(adapter, dtype=np.float64)
        return cls(adapter, np.zeros_like(adapter))


def apply_average(settings: ServerUpdate, state: ServerState, average: np.ndarray) -> ServerState:
    """One FedAvgM step: velocity <- momentum * velocity + average; adapter <- adapter + lr * velocity.

    With momentum 0 and learning rate 1 this is FedAvg, adapter + average, to the last bit.
    """
    average = np.asarray(average, dtype=np.float64)
    if average.shape != state.adapter.shape:
        raise ValueError(f"the average has {average.size} values, the adapter {state.adapter.size}")
    velocity = average if settings.momentum == 0 else settings.momentum * state.velocity + average
    step = velocity if settings.learning_rate == 1 else settings.learning_rate * velocity
    return ServerState(state.adapter + step, velocity)


def state_array(settings: ServerUpdate, state: ServerState) -> np.ndarray:
    """What is saved for a round: the adapter alone under FedAvg, else the adapter over the velocity."""
    if settings.momentum == 0:
        return state.adapter
    return np.stack([state.adapter, state.velocity])


def load_state(settings: ServerUpdate, saved: np.ndarray, path: Path) -> ServerState:
    """The state saved at `path` (see the module docstring for its two shapes).

    Raises ServerStateError for a shape that is neither, or for an adapter saved without a velocity
    while the federation asks for momentum: going on from zero would make this member's adapter
    differ from the others', which kept theirs.
    """
    saved = np.asarray(saved, dtype=np.float64)
    if saved.ndim == 2 and saved.shape[0] == 2:
        return ServerState(saved[0].copy(), saved[1].copy())
    if saved.ndim != 1:
        raise ServerStateError(f"{path}: a round state of shape {saved.shape}, expected (P,) or (2, P)",
                               "restore the federation's state directory from a backup")
    if settings.momentum != 0:
        raise ServerStateError(
            f"{path} holds an adapter without the server velocity, but the federation file sets "
            f"server_update.momentum {settings.momentum}",
            "the federation file's server_update.momentum is not the one this state was written under: "
            "set it back")
    return ServerState.initial(saved)
