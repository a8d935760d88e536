"""CKKS-encrypted aggregation of adapter updates.

Modules, one idea each: ``params`` (CKKS parameters, security and capacity checks), ``codec``
(adapter <-> flat vector), ``keys`` and ``sealing`` (key material, public context, sealing the
key to members), ``wire`` (the binary envelope), ``envelope`` (encrypt, sum, decrypt),
``integrity`` (the sum's integrity tags). Every error derives from :class:`AggregationError`.
"""

from confide.aggregation.codec import AdapterLayout, LayoutEntry, flatten, unflatten
from confide.aggregation.envelope import (
    DecryptedSum,
    EnvelopeHeader,
    WorkerPool,
    check_envelope,
    decrypt_sum,
    encrypt_update,
    read_header,
    sum_envelopes,
)
from confide.aggregation.errors import (
    AggregationError,
    CapacityExceeded,
    DecryptionCheckFailed,
    EnvelopeError,
    InsecureParameters,
    InvalidUpdate,
    KeyMaterialError,
    LayoutMismatch,
    SealedKeyError,
    SecretKeyPresent,
    WrongKey,
)
from confide.aggregation.keys import (
    PublicContext,
    SecretKeyMaterial,
    create_key_material,
    load_secret,
    require_public,
)
from confide.aggregation.params import DEFAULT_PARAMETERS, CkksParameters
from confide.aggregation.sealing import (
    generate_identity_keypair,
    open_sealed,
    read_sealed_header,
    seal_secret,
)

__all__ = [
    "AdapterLayout",
    "AggregationError",
    "CapacityExceeded",
    "CkksParameters",
    "DEFAULT_PARAMETERS",
    "DecryptedSum",
    "DecryptionCheckFailed",
    "EnvelopeError",
    "EnvelopeHeader",
    "InsecureParameters",
    "InvalidUpdate",
    "KeyMaterialError",
    "LayoutEntry",
    "LayoutMismatch",
    "PublicContext",
    "SealedKeyError",
    "SecretKeyMaterial",
    "SecretKeyPresent",
    "WorkerPool",
    "WrongKey",
    "check_envelope",
    "create_key_material",
    "decrypt_sum",
    "encrypt_update",
    "flatten",
    "generate_identity_keypair",
    "load_secret",
    "open_sealed",
    "read_header",
    "read_sealed_header",
    "require_public",
    "seal_secret",
    "sum_envelopes",
    "unflatten",
]
