"""Thin glue over ``tenseal.sealapi``: contexts, packing, and bytes <-> SEAL objects.

TenSEAL 0.3.18 exposes SEAL's ``save``/``load`` by file path only, so objects travel through a
private scratch directory (on tmpfs when available, mode 0700), one short-lived file at a time.
Its ``save`` always compresses (zstd), so coefficients are read back one by one
(``Ciphertext.__getitem__``, about 0.5 us each) and written by building SEAL's uncompressed
serialization, which ``load`` accepts and validates (:func:`ciphertext_from_polys`).
"""

from __future__ import annotations

import functools
import os
import shutil
import struct
import tempfile
from types import TracebackType

import numpy as np
import tenseal.sealapi as seal

from confide.aggregation.errors import EnvelopeError, InsecureParameters
from confide.aggregation.params import CkksParameters

# SEAL's serialization header: magic, header size, version major/minor, compression, reserved,
# total size (little endian, 16 bytes).
_SEAL_HEADER = struct.Struct("<HBBBBHQ")
_SEAL_MAGIC = 0xA15E
_SEAL_COMPRESSION_MODES = (0, 1, 2)


def build_context(params: CkksParameters) -> seal.SEALContext:
    """A SEAL CKKS context for ``params``; raises InsecureParameters if SEAL refuses them."""
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(params.poly_modulus_degree)
    parms.set_coeff_modulus(
        seal.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes))
    )
    context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not context.parameters_set():
        raise InsecureParameters(
            f"SEAL refuses the parameters: {context.parameters_error_message()}",
            "use the defaults (N=4096, [60], scale_bits=40)",
        )
    return context


def last_modulus(context: seal.SEALContext) -> int:
    """The prime ``q0`` of the last level, where uploads and sums live."""
    return int(context.last_context_data().parms().coeff_modulus()[0].value())


@functools.cache
def _header_version() -> bytes:
    """The version bytes of this SEAL build's serialization header (major, minor)."""
    with SealScratch() as scratch:
        return scratch.dump(seal.Plaintext())[3:5]


def _seal_header(body_size: int) -> bytes:
    """A SEAL serialization header for an uncompressed object of ``body_size`` bytes."""
    return _SEAL_HEADER.pack(_SEAL_MAGIC, _SEAL_HEADER.size, *_header_version(), 0, 0,
                             _SEAL_HEADER.size + body_size)


def ciphertext_from_polys(
    scratch: SealScratch,
    context: seal.SEALContext,
    c0: np.ndarray,
    c1: np.ndarray,
    scale_bits: int,
) -> seal.Ciphertext:
    """A two-polynomial ciphertext at the last level, in coefficient form, from its polynomials
    (uint64 arrays of N values below ``q0``). SEAL's ``load`` checks every value against ``q0``.

    The bytes follow SEAL 4's ``Ciphertext::save_members`` without compression: parms_id, the
    NTT flag, size, N, modulus count, scale, correction factor, then the coefficient array as
    a nested serializable (its own header, its length, the words).
    """
    words = np.concatenate([c0, c1]).astype("<u8", copy=False)
    array = struct.pack("<Q", words.size) + words.tobytes()
    array = _seal_header(len(array)) + array
    body = (struct.pack("<4Q", *context.last_parms_id()) + b"\x00"
            + struct.pack("<QQQdQ", 2, c0.size, 1, 2.0**scale_bits, 1) + array)
    return scratch.load_ciphertext(context, _seal_header(len(body)) + body)


def read_poly(ct: seal.Ciphertext, index: int, n: int) -> np.ndarray:
    """Polynomial ``index`` of a one-prime ciphertext as uint64 (n coefficients)."""
    return np.fromiter(map(ct.__getitem__, range(index * n, (index + 1) * n)), dtype=np.uint64, count=n)


def context_fingerprint(context: seal.SEALContext) -> str:
    """Hex id of the parameter set (SEAL's parms_id), to catch a different SEAL build."""
    return "".join(f"{word:016x}" for word in context.first_parms_id())


def pack_complex(values: np.ndarray, slots: int) -> np.ndarray:
    """Pack real ``values`` two per complex slot, zero-padded to whole ciphertexts.

    Returns a complex128 array of shape (number of ciphertexts, ``slots``).
    """
    per_ct = 2 * slots
    n_ct = -(-len(values) // per_ct)
    padded = np.zeros(n_ct * per_ct, dtype=np.float64)
    padded[: len(values)] = values
    return (padded[0::2] + 1j * padded[1::2]).reshape(n_ct, slots)


def unpack_real(slots: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_complex`: complex slots back to interleaved real values."""
    flat = np.asarray(slots, dtype=np.complex128).reshape(-1)
    out = np.empty(2 * flat.size, dtype=np.float64)
    out[0::2] = flat.real
    out[1::2] = flat.imag
    return out


def check_seal_blob(blob: bytes | memoryview, max_bytes: int, what: str) -> None:
    """Cheap structural check of one serialized SEAL object before SEAL parses it."""
    if len(blob) < _SEAL_HEADER.size:
        raise EnvelopeError(f"{what} is truncated ({len(blob)} bytes)", "upload it again")
    if len(blob) > max_bytes:
        raise EnvelopeError(
            f"{what} has {len(blob)} bytes, more than the {max_bytes} these parameters produce",
            "the envelope was made with other parameters or is corrupt",
        )
    magic, header_size, _, _, compression, _, size = _SEAL_HEADER.unpack_from(blob, 0)
    if magic != _SEAL_MAGIC or header_size != _SEAL_HEADER.size:
        raise EnvelopeError(f"{what} is not a SEAL object", "the envelope is corrupt")
    if compression not in _SEAL_COMPRESSION_MODES or size != len(blob):
        raise EnvelopeError(
            f"{what} declares {size} bytes but holds {len(blob)}", "the envelope is corrupt"
        )


class SealScratch:
    """Private scratch directory for SEAL's path-only save/load; use as a context manager."""

    def __init__(self) -> None:
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self._dir = tempfile.mkdtemp(prefix="confide-seal-", dir=base)
        self._path = os.path.join(self._dir, "obj")

    def __enter__(self) -> SealScratch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def dump(self, obj: object) -> bytes:
        """Serialize a SEAL object (anything with ``save(path)``) to bytes.

        The scratch file is overwritten by the next call and removed by :meth:`close`; only
        secret keys are unlinked at once (see :meth:`load_secret_key`).
        """
        obj.save(self._path)  # type: ignore[attr-defined]
        with open(self._path, "rb") as f:
            return f.read()

    def _write(self, blob: bytes | memoryview) -> None:
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)

    def load_ciphertext(
        self, context: seal.SEALContext, blob: bytes | memoryview
    ) -> seal.Ciphertext:
        """Parse a ciphertext; SEAL validates it against ``context``. Raises EnvelopeError."""
        self._write(blob)
        ct = seal.Ciphertext()
        try:
            ct.load(context, self._path)
        except (RuntimeError, ValueError, TypeError) as err:
            raise EnvelopeError(
                f"a ciphertext does not parse under these parameters ({err})",
                "the envelope is corrupt or was made with other parameters",
            ) from None
        return ct

    def load_secret_key(self, context: seal.SEALContext, blob: bytes) -> seal.SecretKey:
        """Parse a secret key (the file lives in the 0700 scratch dir only for the load)."""
        self._write(blob)
        key = seal.SecretKey()
        try:
            key.load(context, self._path)
        except (RuntimeError, ValueError, TypeError) as err:
            raise EnvelopeError(
                f"the secret key does not parse under its parameters ({err})",
                "the key material is corrupt",
            ) from None
        finally:
            os.unlink(self._path)
        return key


def encrypt_rows(
    context: seal.SEALContext,
    secret_key: seal.SecretKey,
    rows: np.ndarray,
    scale_bits: int,
    scratch: SealScratch,
) -> list[bytes]:
    """Encrypt each row of complex slots as one seeded symmetric ciphertext at the last level.

    Seeded symmetric encryption replaces the random half of the ciphertext by the seed that
    generates it, and the last level keeps one prime: together about 8 bytes per real value.
    """
    encoder = seal.CKKSEncoder(context)
    encryptor = seal.Encryptor(context, secret_key)
    level = context.last_parms_id()
    scale = 2.0**scale_bits
    out = []
    for row in rows:
        plain = seal.Plaintext()
        encoder.encode(row.tolist(), level, scale, plain)
        out.append(scratch.dump(encryptor.encrypt_symmetric(plain)))
    return out


def decrypt_rows(
    context: seal.SEALContext, secret_key: seal.SecretKey, cts: list[seal.Ciphertext]
) -> np.ndarray:
    """Decrypt ciphertexts to their complex slots, shape (len(cts), slots)."""
    encoder = seal.CKKSEncoder(context)
    decryptor = seal.Decryptor(context, secret_key)
    rows = []
    for ct in cts:
        plain = seal.Plaintext()
        decryptor.decrypt(ct, plain)
        rows.append(np.asarray(encoder.decode_complex(plain), dtype=np.complex128))
    return np.stack(rows)
