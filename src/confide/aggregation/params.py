"""CKKS parameters for encrypted aggregation: the federation's model, and capacity checks on values.

The parameter model itself, its 128-bit security validation and its error model live in
:mod:`confide.policies.ckks`, shared with the federation file, so what `confide policy check`
accepts is exactly what the key holder can build. This module adds what only encryption needs:
turning a parameter document into parameters with an aggregation error, and checking that given
values fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from confide.aggregation.errors import CapacityExceeded, InsecureParameters
from confide.policies.ckks import (
    COUNT_TOLERANCE,
    DEFAULT_PARAMETERS,
    MAX_PRIME_BITS,
    MIN_PRECISION_BITS,
    MIN_SCALE_BITS,
    SCALE_MARGIN_BITS,
    CkksParameters,
    max_log_q_128,
)

__all__ = [
    "COUNT_TOLERANCE",
    "DEFAULT_PARAMETERS",
    "CapacityReport",
    "CkksParameters",
    "check_capacity",
    "for_magnitude",
    "for_precision",
    "max_log_q_128",
    "parameters",
]


@dataclass(frozen=True)
class CapacityReport:
    """Outcome of :func:`check_capacity`.

    ``max_abs_sum`` is the largest magnitude the decrypted sum may reach; ``error_bound`` is the
    high-probability absolute error per value of the sum, in the units of the encrypted values.
    """

    n_values: int
    n_contributions: int
    max_abs_sum: float
    headroom_bits: float
    error_bound: float


def parameters(**fields: Any) -> CkksParameters:
    """CKKS parameters from keyword fields; raises :class:`InsecureParameters` naming the field and fix."""
    try:
        return CkksParameters(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        cause = (first.get("ctx") or {}).get("error")
        hint = getattr(cause, "hint", "")
        message = str(cause) if cause is not None else f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
        raise InsecureParameters(message, hint or "see confide.policies.ckks for the accepted values") from None


def check_capacity(
    params: CkksParameters,
    n_values: int,
    max_abs: float,
    n_contributions: int,
    max_error: float | None = None,
) -> CapacityReport:
    """Check that ``n_contributions`` vectors of ``n_values`` values, each value of magnitude at
    most ``max_abs`` (this must also bound the weights, as they are encrypted too), can be summed
    under ``params`` without wrapping, and optionally with error at most ``max_error``.

    Raises :class:`CapacityExceeded` naming the limit and the fix.
    """
    if n_values < 1 or n_contributions < 1:
        raise CapacityExceeded(
            f"nothing to carry: n_values={n_values}, n_contributions={n_contributions}",
            "pass at least one value and one contribution",
        )
    if not math.isfinite(max_abs) or max_abs < 0:
        raise CapacityExceeded(f"max_abs {max_abs} is not a finite magnitude", "pass |x|")
    # The count slot adds 1 per contribution, so it bounds the sum from below.
    worst_sum = n_contributions * max(max_abs, 1.0)
    if worst_sum > params.max_abs_sum:
        fit = params.coeff_mod_bit_sizes[0] - 2 - math.ceil(math.log2(worst_sum))
        fix = (
            f"use scale_bits <= {fit}"
            if fit >= MIN_SCALE_BITS
            else "scale the weights down (e.g. normalise them) or shrink the update"
        )
        raise CapacityExceeded(
            f"{n_contributions} contributions of magnitude up to {max_abs:g} can reach "
            f"{worst_sum:g}, beyond the {params.max_abs_sum:g} that scale 2**{params.scale_bits} "
            f"leaves under a {params.coeff_mod_bit_sizes[0]}-bit prime",
            fix,
        )
    bound = params.error_bound(n_contributions)
    if max_error is not None and bound > max_error:
        raise CapacityExceeded(
            f"expected error {bound:.3g} per value exceeds the required {max_error:.3g}",
            f"raise scale_bits (now {params.scale_bits}) while the sum still fits",
        )
    return CapacityReport(
        n_values=n_values,
        n_contributions=n_contributions,
        max_abs_sum=params.max_abs_sum,
        headroom_bits=math.log2(params.max_abs_sum / worst_sum),
        error_bound=bound,
    )


def for_magnitude(max_abs_sum: float, poly_modulus_degree: int = 4096) -> CkksParameters:
    """Parameters with one 60-bit prime and the largest scale under which a sum of magnitude up to
    ``max_abs_sum`` still fits: the most precise choice for that range.

    Raises :class:`CapacityExceeded` when even the smallest scale cannot hold it.
    """
    if not (math.isfinite(max_abs_sum) and max_abs_sum > 0):
        raise CapacityExceeded(f"max_abs_sum {max_abs_sum} is not positive", "pass |sum|")
    scale = MAX_PRIME_BITS - 2 - max(0, math.ceil(math.log2(max_abs_sum)))
    scale = min(scale, MAX_PRIME_BITS - SCALE_MARGIN_BITS)
    if scale < MIN_SCALE_BITS:
        raise CapacityExceeded(
            f"a sum of magnitude {max_abs_sum:g} leaves less than {MIN_SCALE_BITS} bits of "
            "precision under a 60-bit prime",
            "normalise the weights so that the sum stays below 2**36",
        )
    return parameters(poly_modulus_degree=poly_modulus_degree, coeff_mod_bit_sizes=(MAX_PRIME_BITS,),
                      scale_bits=scale)


def for_precision(
    max_abs_sum: float, max_error: float, n_contributions: int, poly_modulus_degree: int = 4096
) -> CkksParameters:
    """The most compact parameters (one 60-bit prime) whose sums of ``n_contributions`` uploads
    reach magnitudes up to ``max_abs_sum`` without wrapping and keep a high-probability error
    per value of at most ``max_error`` (both in the units of the summed values).

    Raises :class:`CapacityExceeded` when no precision meets ``max_error``.
    """
    base = for_magnitude(max_abs_sum, poly_modulus_degree)
    for bits in range(MIN_PRECISION_BITS, base.scale_bits + 1):
        candidate = parameters(**{**base.model_dump(), "upload_precision_bits": bits})
        if candidate.error_bound(n_contributions) <= max_error:
            return candidate
    raise CapacityExceeded(
        f"no upload precision gives an error within {max_error:g} for sums up to {max_abs_sum:g}",
        "accept a larger error, or bound the values more tightly",
    )
