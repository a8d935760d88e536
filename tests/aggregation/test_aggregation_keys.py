"""Key material, the coordinator's keyless context, and sealing the key to members."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from confide.aggregation import (
    KeyMaterialError,
    PublicContext,
    SealedKeyError,
    SecretKeyPresent,
    WrongKey,
    decrypt_sum,
    encrypt_update,
    generate_identity_keypair,
    load_secret,
    open_sealed,
    read_sealed_header,
    seal_secret,
    sum_envelopes,
)


def test_secret_material_round_trips_and_decrypts_what_the_original_encrypted(
    material, coordinator, layout
):
    envelope = encrypt_update(material, np.full(layout.size, 0.5), 2.0, layout.hash)
    restored = load_secret(material.to_bytes())
    assert restored.key_id == material.key_id
    result = decrypt_sum(restored, sum_envelopes(coordinator, [envelope]), layout.hash)
    assert np.allclose(result.average, 0.5, atol=result.error_bound) and result.count == 1


def test_public_context_bytes_are_small_and_carry_key_id_and_parameters(material):
    data = material.public_context_bytes()
    public = PublicContext.from_bytes(data)
    assert public.key_id == material.key_id and public.params == material.params
    assert len(data) < 1024  # a secret key would be ~33 kB


def test_public_context_refuses_bytes_holding_a_secret_key(material):
    with pytest.raises(SecretKeyPresent):
        PublicContext.from_bytes(material.to_bytes())


def test_coordinator_given_secret_material_refuses_to_sum(material, layout):
    envelope = encrypt_update(material, np.zeros(layout.size), 1.0, layout.hash)
    with pytest.raises(SecretKeyPresent):
        sum_envelopes(material, [envelope])
    with pytest.raises(SecretKeyPresent):
        sum_envelopes(material.to_bytes(), [envelope])


def test_coordinator_given_a_tenseal_context_with_secret_key_refuses_to_sum(material, layout):
    envelope = encrypt_update(material, np.zeros(layout.size), 1.0, layout.hash)
    context = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[40, 20, 40])
    assert context.has_secret_key()
    with pytest.raises(SecretKeyPresent):
        sum_envelopes(context, [envelope])


def test_public_context_with_trailing_bytes_or_garbage_is_refused(material):
    with pytest.raises(KeyMaterialError, match="trailing"):
        PublicContext.from_bytes(material.public_context_bytes() + b"\x00" * 64)
    with pytest.raises(KeyMaterialError):
        PublicContext.from_bytes(b"not a context at all")


def test_corrupt_secret_material_is_refused(material):
    data = bytearray(material.to_bytes())
    with pytest.raises(KeyMaterialError):
        load_secret(bytes(data[: len(data) // 2]))
    data[200] ^= 0xFF
    data[201] ^= 0xFF
    with pytest.raises(KeyMaterialError):
        load_secret(bytes(data))


def test_sealed_key_opens_only_for_its_recipient(material):
    alice_private, alice_public = generate_identity_keypair()
    blob = seal_secret(material.to_bytes(), alice_public, "alice", material.key_id)
    assert read_sealed_header(blob).key_id == material.key_id
    opened = load_secret(open_sealed(blob, alice_private, "alice"))
    assert opened.key_id == material.key_id
    assert material.to_bytes() not in blob


def test_sealed_key_cannot_be_opened_with_another_members_key(material):
    _, alice_public = generate_identity_keypair()
    bob_private, _ = generate_identity_keypair()
    blob = seal_secret(material.to_bytes(), alice_public, "alice", material.key_id)
    with pytest.raises(WrongKey):
        open_sealed(blob, bob_private, "alice")
    with pytest.raises(SealedKeyError, match="addressed to 'alice'"):
        open_sealed(blob, bob_private, "bob")


def test_sealed_key_relabelled_or_tampered_in_transit_is_refused(material):
    alice_private, alice_public = generate_identity_keypair()
    blob = seal_secret(b"secret", alice_public, "alice", "k1")
    relabelled = blob.replace(b"k1", b"k2", 1)
    with pytest.raises(WrongKey):
        open_sealed(relabelled, alice_private, "alice")
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(WrongKey):
        open_sealed(bytes(tampered), alice_private, "alice")
    with pytest.raises(SealedKeyError):
        open_sealed(blob[:20], alice_private, "alice")
