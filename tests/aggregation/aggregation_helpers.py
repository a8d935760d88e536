"""Helpers shared by the aggregation tests (a unique module name, unlike conftest)."""

from __future__ import annotations

import numpy as np
import torch

from confide.aggregation.envelope import encrypt_update, read_header
from confide.aggregation.keys import create_key_material
from confide.aggregation.params import CkksParameters
from confide.aggregation.wire import KIND_UPDATE, build_envelope, read_seeds


def update_under_another_key(params: CkksParameters, key_id: str, layout_hash: str, values: np.ndarray) -> bytes:
    """An update envelope of `values` that names `key_id` but was encrypted under a fresh secret key.

    It parses, sums and passes every check short of decrypting, which is the only thing that shows
    it is wrong (a faulty or malicious member's upload).
    """
    made = encrypt_update(create_key_material(params), values, 1.0, layout_hash)
    header = read_header(made)
    blobs = [made[o:o + n] for o, n in zip(header.ciphertext_offsets(), header.ciphertext_lengths)]
    return build_envelope(KIND_UPDATE, key_id, layout_hash, header.n_values, header.slots, read_seeds(made, header),
                          header.bits, header.last_bits, blobs)


def lora_state_dict(rank: int = 4, hidden: int = 96, layers: int = 2, seed: int = 0) -> dict:
    """A small LoRA-shaped adapter state dict (B and A of query/value per layer)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(layers):
        for proj in ("query", "value"):
            prefix = f"base_model.model.encoder.layer.{i}.attention.self.{proj}"
            out[f"{prefix}.lora_A.weight"] = torch.randn(rank, hidden, generator=gen)
            out[f"{prefix}.lora_B.weight"] = torch.randn(hidden, rank, generator=gen)
    return out
