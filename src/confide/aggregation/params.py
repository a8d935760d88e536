"""CKKS parameters for encrypted aggregation, checked against 128-bit security and capacity.

The protocol only ever adds ciphertexts, and clients encrypt at the *last* level of the modulus
chain, where only the first prime ``q0`` remains. So ``q0`` alone decides what a ciphertext can
carry: a decrypted sum must satisfy ``|sum| * 2**scale_bits < q0 / 2`` and its error is about
``sqrt(k * (3.2**2 + 1/12) * N / 2) / 2**scale_bits`` per value for ``k`` contributions (fresh
symmetric-encryption noise of standard deviation 3.2 plus the encoder's rounding, spread over the
canonical embedding). Further primes only enlarge the secret key, so the default uses one.

Default: N=4096, one 60-bit prime, scale 2**40. Measured with TenSEAL 0.3.18: 8.05 bytes per
parameter on the wire for large updates (N=8192 gives the same density but coarser padding and
sqrt(2) more noise), a max error around 1e-9 for 10 contributions, and 2**18 of headroom so that
weights such as sample counts (10 institutions x 10,000 samples) fit. log2(q) = 60 is far below
the 109-bit cap for N=4096.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, model_validator

from confide.aggregation.errors import CapacityExceeded, InsecureParameters

#: Largest total log2(q) for 128-bit classical security with a ternary secret, per ring degree
#: (HomomorphicEncryption.org standard, the table SEAL's TC128 level enforces).
MAX_LOG_Q_128 = {4096: 109, 8192: 218, 16384: 438, 32768: 881}

#: SEAL's largest prime; smaller than 20 bits leaves no room for both precision and headroom.
MAX_PRIME_BITS = 60
MIN_PRIME_BITS = 20
MIN_SCALE_BITS = 20

#: Standard deviation of SEAL's fresh encryption noise per coefficient.
NOISE_STD = 3.2
#: Multiple of the standard deviation used as a high-probability error bound. The per-value error
#: is close to Gaussian (a sum of N independent terms); 10 standard deviations are exceeded with
#: probability below 2**-70 per value, so the bound holds across any realistic update.
ERROR_TAIL = 10.0


@dataclass(frozen=True)
class CapacityReport:
    """Outcome of :meth:`CkksParameters.check_capacity`.

    ``max_abs_sum`` is the largest magnitude the decrypted sum may reach; ``error_bound`` is the
    high-probability absolute error per value of the sum, in the units of the encrypted values.
    """

    n_values: int
    n_contributions: int
    max_abs_sum: float
    headroom_bits: float
    error_bound: float


class CkksParameters(BaseModel):
    """CKKS encryption parameters of one federation (the key-holder builds the context from them).

    Fields: ``poly_modulus_degree`` (ring degree N, a power of two in 4096..32768),
    ``coeff_mod_bit_sizes`` (bit sizes of the primes of q; the first one is what ciphertexts
    carry), ``scale_bits`` (log2 of the encoding scale; higher = more precision, less headroom).

    Raises :class:`InsecureParameters` on construction when the parameters are malformed or
    exceed the 128-bit security limit, naming what to use instead.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (60,)
    scale_bits: int = 40

    @model_validator(mode="after")
    def _secure_and_well_formed(self) -> CkksParameters:
        n = self.poly_modulus_degree
        if n not in MAX_LOG_Q_128:
            raise InsecureParameters(
                f"poly_modulus_degree {n} is not supported",
                "use a power of two in 4096..32768, e.g. 4096",
            )
        bits = self.coeff_mod_bit_sizes
        if not bits:
            raise InsecureParameters("coeff_mod_bit_sizes is empty", "use [60]")
        for b in bits:
            if not MIN_PRIME_BITS <= b <= MAX_PRIME_BITS:
                raise InsecureParameters(
                    f"prime size {b} bits in coeff_mod_bit_sizes is outside "
                    f"{MIN_PRIME_BITS}..{MAX_PRIME_BITS}",
                    "use prime sizes between 20 and 60 bits, e.g. [60]",
                )
        total = sum(bits)
        limit = MAX_LOG_Q_128[n]
        if total > limit:
            bigger = [d for d, cap in sorted(MAX_LOG_Q_128.items()) if cap >= total]
            fix = f"poly_modulus_degree {bigger[0]}" if bigger else "fewer or smaller primes"
            raise InsecureParameters(
                f"log2(q) = {total} exceeds the 128-bit security limit of {limit} for N={n}",
                f"use fewer or smaller primes, or {fix}",
            )
        if not MIN_SCALE_BITS <= self.scale_bits <= bits[0] - 3:
            raise InsecureParameters(
                f"scale_bits {self.scale_bits} does not fit the first prime of {bits[0]} bits",
                f"use scale_bits between {MIN_SCALE_BITS} and {bits[0] - 3} (e.g. 40 with a "
                "60-bit prime)",
            )
        return self

    @property
    def slots(self) -> int:
        """Complex slots per ciphertext (N/2); each carries two real values."""
        return self.poly_modulus_degree // 2

    @property
    def values_per_ciphertext(self) -> int:
        """Real values per ciphertext (two per complex slot)."""
        return self.poly_modulus_degree

    @property
    def max_abs_sum(self) -> float:
        """Largest magnitude a decrypted sum may reach without wrapping around ``q0``.

        Two bits of margin below ``q0 / 2`` absorb the noise and the prime being below 2**bits.
        """
        return 2.0 ** (self.coeff_mod_bit_sizes[0] - self.scale_bits - 2)

    def error_std(self, n_contributions: int) -> float:
        """Standard deviation of the error per real value of a sum of ``n_contributions``."""
        variance = n_contributions * (NOISE_STD**2 + 1.0 / 12.0) * self.poly_modulus_degree / 2
        return math.sqrt(variance) / 2.0**self.scale_bits

    def error_bound(self, n_contributions: int) -> float:
        """High-probability absolute error per value of a decrypted sum (units of the values)."""
        return ERROR_TAIL * self.error_std(n_contributions)

    def check_capacity(
        self,
        n_values: int,
        max_abs: float,
        n_contributions: int,
        max_error: float | None = None,
    ) -> CapacityReport:
        """Check that ``n_contributions`` vectors of ``n_values`` values, each value of
        magnitude at most ``max_abs`` (this must also bound the weights, as they are encrypted
        too), can be summed without wrapping, and optionally with error at most ``max_error``.

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
        if worst_sum > self.max_abs_sum:
            fit = self.coeff_mod_bit_sizes[0] - 2 - math.ceil(math.log2(worst_sum))
            fix = (
                f"use scale_bits <= {fit}"
                if fit >= MIN_SCALE_BITS
                else "scale the weights down (e.g. normalise them) or shrink the update"
            )
            raise CapacityExceeded(
                f"{n_contributions} contributions of magnitude up to {max_abs:g} can reach "
                f"{worst_sum:g}, beyond the {self.max_abs_sum:g} that scale 2**{self.scale_bits} "
                f"leaves under a {self.coeff_mod_bit_sizes[0]}-bit prime",
                fix,
            )
        bound = self.error_bound(n_contributions)
        if max_error is not None and bound > max_error:
            raise CapacityExceeded(
                f"expected error {bound:.3g} per value exceeds the required {max_error:.3g}",
                f"raise scale_bits (now {self.scale_bits}) while the sum still fits",
            )
        return CapacityReport(
            n_values=n_values,
            n_contributions=n_contributions,
            max_abs_sum=self.max_abs_sum,
            headroom_bits=math.log2(self.max_abs_sum / worst_sum),
            error_bound=bound,
        )

    @classmethod
    def for_magnitude(cls, max_abs_sum: float, poly_modulus_degree: int = 4096) -> CkksParameters:
        """Parameters with one 60-bit prime and the largest scale under which a sum of
        magnitude up to ``max_abs_sum`` still fits: the most precise choice for that range.

        Raises :class:`CapacityExceeded` when even the smallest scale cannot hold it.
        """
        if not (math.isfinite(max_abs_sum) and max_abs_sum > 0):
            raise CapacityExceeded(f"max_abs_sum {max_abs_sum} is not positive", "pass |sum|")
        scale = MAX_PRIME_BITS - 2 - max(0, math.ceil(math.log2(max_abs_sum)))
        scale = min(scale, MAX_PRIME_BITS - 3)
        if scale < MIN_SCALE_BITS:
            raise CapacityExceeded(
                f"a sum of magnitude {max_abs_sum:g} leaves less than {MIN_SCALE_BITS} bits of "
                "precision under a 60-bit prime",
                "normalise the weights so that the sum stays below 2**36",
            )
        return cls(
            poly_modulus_degree=poly_modulus_degree,
            coeff_mod_bit_sizes=(MAX_PRIME_BITS,),
            scale_bits=scale,
        )


DEFAULT_PARAMETERS = CkksParameters()
