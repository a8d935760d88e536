"""CKKS parameters of a federation: the one model the policy file and the encryption code share.

The protocol only ever adds ciphertexts, and members encrypt at the *last* level of the modulus
chain, where only the first prime ``q0`` remains. So ``q0`` alone decides what a ciphertext can
carry: a decrypted sum must satisfy ``|sum| * 2**scale_bits < q0 / 2``, and its error is about
``sqrt(k * (3.2**2 + 1/12) * N / 2) / 2**scale_bits`` per value for ``k`` contributions (fresh
symmetric-encryption noise of standard deviation 3.2 plus the encoder's rounding, spread over the
canonical embedding). Further primes only enlarge the secret key, so the default uses one.

Uploads do not carry all of ``q0``'s bits: each coefficient of an uploaded ciphertext (in
coefficient form) is rounded to a multiple of ``2**(scale_bits - upload_precision_bits)``, so it
keeps ``log2(q0) - scale_bits + upload_precision_bits`` bits on the wire. The rounding adds an
error uniform over one step to every coefficient, which enters the error model like the fresh
noise: variance ``4**dropped / 12`` per coefficient and contribution. The ciphertext carrying the
trailer keeps at least :data:`TRAILER_PRECISION_BITS`, so the count slot stays readable.

Default: N=4096, one 60-bit prime, scale 2**48, 18 precision bits: 30 bits (3.75 bytes) per
parameter on the wire, 2**10 of headroom for the summed values (the aggregation weights, default
1, included), and an error around 3e-4 per value of a 10-member sum (3e-5 on their average).

The 128-bit security limit on log2(q) is asked of SEAL itself (``CoeffModulus.MaxBitCount`` at
``TC128``), the same table SEAL enforces when the key holder builds the context, so a file that
passes here cannot be refused there.
"""

from __future__ import annotations

import functools
import math

from pydantic import Field, model_validator

from confide.policies.common import FieldProblem, StrictModel

#: Ring degrees confide accepts. Below 4096, 128-bit security leaves less than one 60-bit prime
#: plus headroom; above 32768, SEAL has no 128-bit parameters.
SUPPORTED_DEGREES = (4096, 8192, 16384, 32768)

#: SEAL's prime sizes; below 20 bits leaves no room for both precision and headroom.
MAX_PRIME_BITS = 60
MIN_PRIME_BITS = 20
MIN_SCALE_BITS = 20
#: Bits kept between the scale and the first prime: 2 for the sign and noise, 1 for the sum itself.
SCALE_MARGIN_BITS = 3

#: Standard deviation of SEAL's fresh encryption noise per coefficient.
NOISE_STD = 3.2
#: Multiple of the standard deviation used as a high-probability error bound. The per-value error
#: is close to Gaussian (a sum of N independent terms); 10 standard deviations are exceeded with
#: probability below 2**-70 per value, so the bound holds across any realistic update.
ERROR_TAIL = 10.0
#: How far from a whole number the decrypted count slot may be. A correct sum is within the error
#: bound of one; a wrapped or corrupt sum lands anywhere.
COUNT_TOLERANCE = 1e-3
#: Precision bits the ciphertext holding the trailer keeps at least: its error must stay well
#: inside COUNT_TOLERANCE for hundreds of members (10 standard deviations below it up to 10**5).
TRAILER_PRECISION_BITS = 26
#: Fewest precision bits an upload may keep: below this the rounding swamps any update.
MIN_PRECISION_BITS = 8


@functools.cache
def max_log_q_128(poly_modulus_degree: int) -> int:
    """Largest total log2(q) SEAL allows for 128-bit classical security at this ring degree (bits).

    Returns 0 for degrees SEAL has no 128-bit parameters for.
    """
    import tenseal.sealapi as seal  # imported here: only validation needs it, and it loads a native library

    return int(seal.CoeffModulus.MaxBitCount(poly_modulus_degree, seal.SEC_LEVEL_TYPE.TC128))


class CkksParameters(StrictModel):
    """CKKS encryption parameters of one federation; the key holder builds the SEAL context from them.

    Validation refuses anything SEAL would refuse at 128-bit security, or that could not carry a
    sum, each time naming the field and the fix (as FILE:LINE problems when read from a policy).
    """

    poly_modulus_degree: int = Field(4096, description="Ring dimension N: 4096, 8192, 16384 or 32768.")
    coeff_mod_bit_sizes: tuple[int, ...] = Field(
        (60,),
        min_length=1,
        description="Bit sizes of the coefficient modulus primes (20-60 each); ciphertexts carry only the first.",
    )
    scale_bits: int = Field(48, description="log2 of the CKKS encoding scale: higher is more precise, less headroom.")
    upload_precision_bits: int = Field(
        18,
        description="Uploaded ciphertexts keep their coefficients to 2**-bits of a value unit (lower bits are "
        "dropped): each bit costs 1/8 byte per parameter and halves the rounding error. At most scale_bits.",
    )

    @model_validator(mode="after")
    def _secure_and_well_formed(self) -> CkksParameters:
        n = self.poly_modulus_degree
        if n not in SUPPORTED_DEGREES:
            raise FieldProblem(("poly_modulus_degree",), f"poly_modulus_degree {n} is not supported",
                               "use a power of two in 4096..32768, e.g. 4096")
        bits = self.coeff_mod_bit_sizes
        for index, b in enumerate(bits):
            if not MIN_PRIME_BITS <= b <= MAX_PRIME_BITS:
                raise FieldProblem(("coeff_mod_bit_sizes", index),
                                   f"prime size {b} bits is outside {MIN_PRIME_BITS}..{MAX_PRIME_BITS}",
                                   "use prime sizes between 20 and 60 bits, e.g. [60]")
        total, limit = sum(bits), max_log_q_128(n)
        if total > limit:
            bigger = [d for d in SUPPORTED_DEGREES if max_log_q_128(d) >= total]
            fix = f"or poly_modulus_degree {bigger[0]}" if bigger else "the sum must stay at or below the limit"
            raise FieldProblem(("coeff_mod_bit_sizes",),
                               f"log2(q) = {total} exceeds the 128-bit security limit of {limit} for N={n}",
                               f"use fewer or smaller primes, {fix}")
        top = bits[0] - SCALE_MARGIN_BITS
        if not MIN_SCALE_BITS <= self.scale_bits <= top:
            raise FieldProblem(("scale_bits",),
                               f"scale_bits {self.scale_bits} does not fit the first prime of {bits[0]} bits",
                               f"use scale_bits between {MIN_SCALE_BITS} and {top} (e.g. 48 with a 60-bit prime)")
        if not MIN_PRECISION_BITS <= self.upload_precision_bits <= self.scale_bits:
            raise FieldProblem(("upload_precision_bits",),
                               f"upload_precision_bits {self.upload_precision_bits} is outside "
                               f"{MIN_PRECISION_BITS}..{self.scale_bits} (scale_bits)",
                               "use e.g. 18; scale_bits keeps every bit")
        return self

    @property
    def slots(self) -> int:
        """Complex slots per ciphertext (N/2); each carries two real values."""
        return self.poly_modulus_degree // 2

    @property
    def max_abs_sum(self) -> float:
        """Largest magnitude a decrypted sum may reach without wrapping around ``q0``.

        Two bits of margin below ``q0 / 2`` absorb the noise and the prime being below 2**bits.
        """
        return 2.0 ** (self.coeff_mod_bit_sizes[0] - self.scale_bits - 2)

    def dropped_bits(self, trailer: bool = False) -> int:
        """Low bits dropped from each coefficient of an upload (of the trailer's ciphertext if
        ``trailer``); the rounding step is ``2**dropped`` in coefficient units."""
        keep = max(self.upload_precision_bits, TRAILER_PRECISION_BITS) if trailer else self.upload_precision_bits
        return max(0, self.scale_bits - keep)

    def upload_bits(self, trailer: bool = False) -> int:
        """Bits per coefficient of an uploaded ciphertext on the wire (one coefficient per value)."""
        return self.coeff_mod_bit_sizes[0] - self.dropped_bits(trailer)

    def error_std(self, n_contributions: int, trailer: bool = False) -> float:
        """Standard deviation of the error per real value of a sum of ``n_contributions`` uploads
        (of the values in the trailer's ciphertext if ``trailer``)."""
        dropped = self.dropped_bits(trailer)
        rounding = 4.0**dropped / 12.0 if dropped else 0.0
        variance = n_contributions * (NOISE_STD**2 + 1.0 / 12.0 + rounding) * self.poly_modulus_degree / 2
        return math.sqrt(variance) / 2.0**self.scale_bits

    def error_bound(self, n_contributions: int, trailer: bool = False) -> float:
        """High-probability absolute error per value of a decrypted sum (units of the values)."""
        return ERROR_TAIL * self.error_std(n_contributions, trailer)

    def federation_problem(self, n_members: int) -> FieldProblem | None:
        """What stops a federation of ``n_members`` from ever decrypting a correct sum, or None.

        Each upload carries a count slot of 1, so the sum reaches at least ``n_members``; and the
        count slot must decrypt to within :data:`COUNT_TOLERANCE` of a whole number, which the error
        of ``n_members`` contributions must allow. (Each member's aggregation weight is checked
        against :attr:`max_abs_sum` when it encrypts.)
        """
        if n_members > self.max_abs_sum:
            return FieldProblem(("scale_bits",),
                                f"scale 2**{self.scale_bits} leaves room for sums up to {self.max_abs_sum:g}, "
                                f"less than the count of {n_members} members",
                                "lower scale_bits: each 1 less doubles the room (48 with a 60-bit prime leaves 2**10)")
        if self.error_bound(n_members, trailer=True) > COUNT_TOLERANCE:
            return FieldProblem(("scale_bits",),
                                f"scale 2**{self.scale_bits} gives an error of "
                                f"{self.error_bound(n_members, trailer=True):.2g} per value for {n_members} "
                                "members, too coarse to read the count slot",
                                "raise scale_bits (48 suits a 60-bit prime)")
        return None

    def describe(self, n_members: int) -> str:
        """One line: ring, modulus against its limit, room for the members' weighted sums, upload size."""
        room = self.max_abs_sum / max(n_members, 1)
        return (f"CKKS N={self.poly_modulus_degree}, log2(q) {sum(self.coeff_mod_bit_sizes)}/"
                f"{max_log_q_128(self.poly_modulus_degree)} (128-bit), sums up to {self.max_abs_sum:g} "
                f"({room:.0f} per member), {self.upload_bits() / 8:g} B/param")


DEFAULT_PARAMETERS = CkksParameters()
