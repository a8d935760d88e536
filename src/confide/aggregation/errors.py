"""Errors raised by ``confide.aggregation``.

Every error names what is wrong and carries a hint saying what to do about it. They derive from
``confide.errors.BadInput``, so the CLI prints them as one line and exits with code 2.
"""

from __future__ import annotations

from confide.errors import BadInput


class AggregationError(BadInput):
    """Base class of every error this package raises on bad input or refused operations."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} (hint: {hint})" if hint else message)


class InsecureParameters(AggregationError):
    """CKKS parameters below 128-bit security, or malformed (wrong degree, bad prime sizes)."""


class CapacityExceeded(AggregationError):
    """Parameters are secure but too small for the values: the sum would wrap or lose precision."""


class LayoutMismatch(AggregationError):
    """A vector or envelope belongs to a different adapter layout than the one expected."""


class InvalidUpdate(AggregationError):
    """An adapter update cannot be encrypted as given (not finite, wrong shape, bad weight)."""


class EnvelopeError(AggregationError):
    """An envelope is malformed, truncated, oversized, or its ciphertexts are invalid."""


class WrongKey(AggregationError):
    """Data was made under another CKKS key, or a sealed blob does not open with this key."""


class SecretKeyPresent(AggregationError):
    """A secret key was offered where only public parameters are allowed (the coordinator)."""


class KeyMaterialError(AggregationError):
    """Secret key material or public-context bytes are malformed or of an unknown version."""


class SealedKeyError(AggregationError):
    """A sealed secret-key blob is malformed or addressed to another member."""


class DecryptionCheckFailed(AggregationError):
    """A decrypted sum fails its integrity checks (count slot, weight slot, padding)."""


class SumRefused(AggregationError):
    """A sum is not exactly the contributions it names (checked with the members' integrity tags)."""
