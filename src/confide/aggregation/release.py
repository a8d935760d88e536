"""Releasing decrypted values to a non-key-holder: Gaussian noise flooding, rounding, counting.

Why: exact CKKS decryptions leak the secret key. A decrypted value is ``m + e`` where the error
``e`` depends on the secret key, and Li and Micciancio (ePrint 2020/1533) recover the whole key
from a few decryptions whose message is known. Raw decryptions therefore never leave key holders.

Flooding: each released value gets independent Gaussian noise of standard deviation
``noise_std = 2**flood_bits * noise_bound``, where ``noise_bound`` bounds ``|e|`` (see
``DecryptedSum.error_bound``). For two error vectors the released distributions differ by a
KL divergence of at most ``2 * 2**(-2 * flood_bits)`` per value, so over ``v`` values and ``r``
releases the statistical distance from a release independent of the key is at most
``sqrt(v * r) * 2**-flood_bits`` (Pinsker). The default 30 bits keeps that below 2**-16 for
10**6 values released 16 times. Noise sampling uses the operating system's CSPRNG.

Rounding: values are then rounded to a power-of-two grid between 1/32 and 1/16 of
``noise_std``. This removes the low-order bits of floating-point arithmetic, which can reveal
the un-noised value (Mironov, CCS 2012), and costs less than 0.1% extra variance.

Counting: every release under a key is recorded, before the values are handed out, in a small
JSON file; past the configured limit further releases are refused.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from confide.aggregation.envelope import DecryptedSum
from confide.aggregation.errors import InvalidUpdate, ReleaseCounterError, ReleaseLimitReached

DEFAULT_FLOOD_BITS = 30
DEFAULT_RELEASE_LIMIT = 16
_GRID_BELOW_STD_BITS = 4
_KEY_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class FloodedRelease:
    """Values safe to hand to a non-key-holder, with the noise that was added to them."""

    values: np.ndarray
    noise_std: float
    grid_step: float
    flood_bits: int


def secure_standard_normal(n: int) -> np.ndarray:
    """``n`` independent N(0, 1) samples from the OS CSPRNG (Box-Muller over 53-bit uniforms)."""
    pairs = (n + 1) // 2
    raw = np.frombuffer(os.urandom(16 * pairs), dtype=np.uint64)
    # (k + 1) / 2**53 lies in (0, 1], so the logarithm is finite.
    u = ((raw >> np.uint64(11)).astype(np.float64) + 1.0) / 2.0**53
    radius = np.sqrt(-2.0 * np.log(u[:pairs]))
    angle = 2.0 * np.pi * u[pairs:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]


def flood_and_round(
    values: np.ndarray,
    noise_bound: float,
    *,
    flood_bits: int = DEFAULT_FLOOD_BITS,
    rng: np.random.Generator | None = None,
) -> FloodedRelease:
    """Add Gaussian noise ``2**flood_bits * noise_bound`` to each value, then round.

    ``noise_bound`` bounds the CKKS error of each value, in the values' units. ``rng`` exists for
    reproducible tests only; by default the noise comes from the OS CSPRNG.

    Raises :class:`InvalidUpdate` for non-finite values or a non-positive bound.
    """
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise InvalidUpdate("values to release hold NaN or infinite entries")
    if not (math.isfinite(noise_bound) and noise_bound > 0):
        raise InvalidUpdate(f"noise_bound must be positive, got {noise_bound!r}",
                            "pass DecryptedSum.error_bound")
    if not 0 < flood_bits <= 60:
        raise InvalidUpdate(f"flood_bits must be in 1..60, got {flood_bits}")
    noise_std = noise_bound * 2.0**flood_bits
    if rng is None:
        noise = secure_standard_normal(values.size).reshape(values.shape)
    else:
        noise = rng.standard_normal(values.shape)
    grid_step = 2.0 ** (math.floor(math.log2(noise_std)) - _GRID_BELOW_STD_BITS)
    released = np.round((values + noise_std * noise) / grid_step) * grid_step
    return FloodedRelease(released, noise_std, grid_step, flood_bits)


class ReleaseCounter:
    """Per-key count of releases to non-key-holders, persisted as JSON at ``path``.

    The file is ``{"version": 1, "releases": {key_id: count}}``, rewritten atomically under an
    exclusive lock, so concurrent agents on one host cannot both take the last release.
    """

    def __init__(self, path: str | os.PathLike, limit: int = DEFAULT_RELEASE_LIMIT) -> None:
        if not isinstance(limit, int) or limit < 0:
            raise ReleaseCounterError(f"release limit must be a whole number >= 0, got {limit!r}")
        self.path = Path(path)
        self.limit = limit

    def _load(self) -> dict[str, int]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise ReleaseCounterError(f"cannot read {self.path}: {err.strerror}") from None
        try:
            doc = json.loads(text)
            releases = doc["releases"]
            ok = doc.get("version") == 1 and all(
                _KEY_ID.match(k) and isinstance(v, int) and v >= 0 for k, v in releases.items()
            )
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise ReleaseCounterError(
                f"release counter {self.path} is corrupt",
                "restore it from backup; releases are refused until then",
            )
        return dict(releases)

    def count(self, key_id: str) -> int:
        """Releases recorded so far under ``key_id``."""
        return self._load().get(key_id, 0)

    def record(self, key_id: str) -> int:
        """Record one more release under ``key_id`` and return the new count.

        Raises :class:`ReleaseLimitReached` (nothing recorded) when the limit is already used.
        """
        if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
            raise ReleaseCounterError("key_id must be 32 hex characters")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            releases = self._load()
            used = releases.get(key_id, 0)
            if used >= self.limit:
                raise ReleaseLimitReached(
                    f"key {key_id[:8]}... already released {used} of {self.limit} allowed results",
                    "rotate to a fresh key before releasing more",
                )
            releases[key_id] = used + 1
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w") as f:
                json.dump({"version": 1, "releases": releases}, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        return used + 1


def release_average(
    decrypted: DecryptedSum,
    key_id: str,
    counter: ReleaseCounter,
    *,
    flood_bits: int = DEFAULT_FLOOD_BITS,
    rng: np.random.Generator | None = None,
) -> FloodedRelease:
    """Prepare a decrypted average for a non-key-holder: count the release first (write-ahead,
    so a crash can only over-count), then flood and round with the sum's own error bound.

    Raises :class:`ReleaseLimitReached` when ``key_id`` has no releases left.
    """
    counter.record(key_id)
    return flood_and_round(
        decrypted.average, decrypted.error_bound, flood_bits=flood_bits, rng=rng
    )
