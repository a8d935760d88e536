"""Noise calibration: the smallest noise multiplier whose total epsilon stays within a target.

Calibration composes the new steps with whatever was already spent, so a plan made halfway through
a dataset's life is exact (Opacus' `make_private_with_epsilon` would calibrate as if nothing had
been spent yet, which is why it is not used).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

from confide.policies.institution import MAX_BUDGET_EPSILON as MAX_EPSILON
from confide.privacy.accounting import RoundSpend, check_accountant, epsilon, history_with
from confide.privacy.errors import AccountingError, CalibrationError

# The search stops once the achieved epsilon is within this fraction below the target: the noise is
# then at most ~0.1% larger than strictly needed.
DEFAULT_RELATIVE_TOLERANCE = 1e-3
_MAX_NOISE_MULTIPLIER = 1e4
# The accountants' numerical domain: past these, PLD and RDP overflow, lose all precision or take
# minutes (a sample rate of 1e-12 or a delta of 1e-300 is no real training).
MIN_DELTA = 1e-15
MIN_SAMPLE_RATE = 1e-7
MAX_STEPS = 10_000_000
_MIN_NOISE_MULTIPLIER = 1e-3
_MAX_ITERATIONS = 60


@dataclass(frozen=True)
class Calibration:
    """The result of `calibrate`: what `confide calibrate` prints."""

    noise_multiplier: float
    epsilon: float
    """Epsilon actually reached with `noise_multiplier` (<= target_epsilon)."""
    target_epsilon: float
    delta: float
    sample_rate: float
    steps: int
    accountant: str

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"noise multiplier {self.noise_multiplier:.4f} spends epsilon {self.epsilon:.4f} "
            f"(target {self.target_epsilon:g}, delta {self.delta:g}) over {self.steps} steps "
            f"at sample rate {self.sample_rate:g} ({self.accountant.upper()} accountant)"
        )


def _check_inputs(target: float, delta: float, sample_rate: float, steps: int, repeats: int) -> None:
    if not (0 < target <= MAX_EPSILON):
        raise CalibrationError(f"--epsilon must be in (0, {MAX_EPSILON:g}], got {target!r}",
                               "the largest budget a policy accepts")
    if not (MIN_DELTA <= delta < 1):
        raise CalibrationError(f"--delta must be in [{MIN_DELTA:g}, 1), got {delta!r}",
                               "typically 1e-5 or 1/(10 x records)")
    if not (MIN_SAMPLE_RATE <= sample_rate <= 1):
        raise CalibrationError(
            f"--sample-rate must be in [{MIN_SAMPLE_RATE:g}, 1], got {sample_rate!r}",
            "sample rate = expected batch size / records"
        )
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise CalibrationError(f"--steps must be an integer from 1 to {MAX_STEPS:,}, got {steps!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise CalibrationError(f"repeats must be a positive integer, got {repeats!r}")
    if steps * repeats > MAX_STEPS:
        raise CalibrationError(f"{repeats} rounds x {steps} steps is more than {MAX_STEPS:,} steps in all",
                               "plan fewer rounds or steps per round")


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "pld",
    prior_history: Iterable[tuple[float, float, int]] = (),
    repeats: int = 1,
    relative_tolerance: float = DEFAULT_RELATIVE_TOLERANCE,
) -> float:
    """Smallest noise multiplier sigma such that `prior_history` followed by `repeats` rounds of
    `steps` steps at (sigma, `sample_rate`) has epsilon <= `target_epsilon` at `delta`.

    Bisection over the accountant: the result always satisfies the target and spends at least
    `(1 - relative_tolerance)` of it (unless the noise needed is below 0.001). Raises
    CalibrationError if the inputs are invalid, the prior history already spends the target, or no
    noise up to 1e4 fits.
    """
    _check_inputs(target_epsilon, delta, sample_rate, steps, repeats)
    try:
        name = check_accountant(accountant)
        prior = history_with(prior_history)
        spent = epsilon(prior, delta, name)
    except AccountingError as exc:
        raise CalibrationError(exc.message, exc.hint) from None
    if spent >= target_epsilon:
        raise CalibrationError(
            f"epsilon {spent:.4g} is already spent, not below the target {target_epsilon:g}",
            "no further training fits this budget",
        )
    total_steps = steps * repeats

    def eps_at(sigma: float) -> float:
        return epsilon(history_with(prior, RoundSpend(sigma, sample_rate, total_steps)), delta, name)

    # Bracket [low, high] with eps(low) > target >= eps(high), found by doubling or halving from 1.
    high, eps_high = 1.0, eps_at(1.0)
    while eps_high > target_epsilon:
        if high >= _MAX_NOISE_MULTIPLIER:
            raise CalibrationError(
                f"even noise multiplier {high:g} spends epsilon {eps_high:.4g} > {target_epsilon:g}",
                "raise the epsilon budget, lower the sample rate or take fewer steps",
            )
        high *= 2.0
        eps_high = eps_at(high)
    low = high / 2.0
    eps_low = eps_at(low)
    while eps_low <= target_epsilon:
        high, eps_high = low, eps_low
        if high <= _MIN_NOISE_MULTIPLIER:
            return high
        low = high / 2.0
        eps_low = eps_at(low)
    return _refine(eps_at, target_epsilon, low, eps_low, high, eps_high, relative_tolerance)


def _refine(eps_at, target: float, low: float, eps_low: float, high: float, eps_high: float,
            relative_tolerance: float) -> float:
    """Shrink the bracket until eps(high) is within tolerance below the target; return high.

    log(epsilon) is close to linear in log(sigma), so each guess interpolates there (regula falsi,
    Illinois variant: an end kept twice in a row has its weight halved, so it cannot stall).
    Bisection is used while eps(low) is infinite. Every guess keeps the bracket, so `high`
    always satisfies the target.
    """
    goal = math.log(target)

    def gap(eps: float) -> float:
        return math.log(eps) - goal if 0 < eps < math.inf else (math.inf if eps == math.inf else -math.inf)

    f_low, f_high = gap(eps_low), gap(eps_high)
    last_moved = 0  # +1: high was replaced last, -1: low was
    for _ in range(_MAX_ITERATIONS):
        if eps_high >= target * (1.0 - relative_tolerance) or (high - low) <= 1e-9 * high:
            break
        guess = (low + high) / 2.0
        if math.isfinite(f_low) and math.isfinite(f_high) and f_low != f_high:
            a, b = math.log(low), math.log(high)
            interpolated = math.exp(b - f_high * (b - a) / (f_high - f_low))
            if low < interpolated < high:
                guess = interpolated
        eps_guess = eps_at(guess)
        if eps_guess <= target:
            high, eps_high, f_high = guess, eps_guess, gap(eps_guess)
            if last_moved == 1:
                f_low /= 2.0
            last_moved = 1
        else:
            low, f_low = guess, gap(eps_guess)
            if last_moved == -1:
                f_high /= 2.0
            last_moved = -1
    return high


def calibrate(
    epsilon_target: float, delta: float, sample_rate: float, steps: int, accountant: str = "pld"
) -> Calibration:
    """What `confide calibrate --epsilon E --delta D --sample-rate Q --steps N [--accountant A]` computes.

    Returns the noise multiplier that spends the budget (to within 0.1%) and the epsilon it
    actually reaches. Raises CalibrationError, naming the offending option, for invalid inputs or
    an unreachable budget.
    """
    sigma = calibrate_noise_multiplier(epsilon_target, delta, sample_rate, steps, accountant)
    reached = epsilon([(sigma, sample_rate, steps)], delta, accountant)
    return Calibration(sigma, reached, epsilon_target, delta, sample_rate, steps, accountant)
