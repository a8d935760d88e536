"""The most one honest round can move a parameter: members refuse a decrypted average beyond it.

A member cannot see another's update, only the average of the round's sum. What bounds it is the
optimizer every member runs (`confide.privacy.training`): AdamW with the federation file's learning
rates and steps per round, a fresh optimizer each round, torch's moment decays and weight decay
(fixed in `confide.policies.federation`). Adam's step on a coordinate is
`lr * m_hat / (sqrt(v_hat) + eps)`; by Cauchy-Schwarz on the two moving averages,

    |m_hat_t| / sqrt(v_hat_t) <= (1 - b1) * sqrt(sum_{k<t} (b1^2 / b2)^k) * sqrt(1 - b2^t)
                                  / ((1 - b1^t) * sqrt(1 - b2))

(exactly 1 at t = 1, about 1.0-1.1 over the first tens of steps with b1 = 0.9, b2 = 0.999), whatever
the gradients, clipped or noised. Decoupled weight decay `lam = lr * wd` shrinks the weight by at most
`|w0| * (1 - (1 - lam)^S)` over S steps. So a round moves coordinate j by at most

    lr * sum_{t=1..S} B(t) + |w0_j| * (1 - (1 - lr * wd)^S),

with `lr` the larger of the head's and the adapter's learning rate, and so does any weighted
average of honest rounds. A contributor whose update goes beyond it (a scaled-up update) makes the
average go beyond it unless its weight share dilutes it back inside; the round is refused then, like
a sum that does not decrypt, and the coordinator's search finds the contributor (`faults`). What the
bound does not stop: an update inside it pointed wherever its sender likes (at most `lr * S` per
coordinate for Adam, diluted by the sender's weight share). Local SGD has no such bound (its
Gaussian noise is unbounded), so it is not checked.
"""

from __future__ import annotations

import math

import numpy as np

from confide.policies import FederationPolicy
from confide.policies.federation import ADAMW_BETAS, ADAMW_WEIGHT_DECAY


def adam_step_bound(t: int, betas: tuple[float, float] = ADAMW_BETAS) -> float:
    """The largest |m_hat / sqrt(v_hat)| Adam can reach at step t (1-based), for any gradients."""
    b1, b2 = betas
    ratio = b1 * b1 / b2
    geometric = t if ratio == 1.0 else (1 - ratio**t) / (1 - ratio)
    return (1 - b1) * math.sqrt(geometric) * math.sqrt(1 - b2**t) / ((1 - b1**t) * math.sqrt(1 - b2))


def max_update(federation: FederationPolicy, adapter: np.ndarray) -> np.ndarray | None:
    """Per coordinate of the flat adapter, the most one honest round starting from `adapter` moves it
    (None for local SGD, which has no bound)."""
    training = federation.training
    if training.optimizer != "adamw":
        return None
    lr = max(training.learning_rate, training.adapter_learning_rate or 0.0)
    steps = training.steps_per_round
    adam = lr * sum(adam_step_bound(t) for t in range(1, steps + 1))
    decay = 1.0 - (1.0 - lr * ADAMW_WEIGHT_DECAY) ** steps
    return adam + decay * np.abs(np.asarray(adapter, dtype=np.float64))
