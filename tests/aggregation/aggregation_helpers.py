"""Helpers shared by the aggregation tests (a unique module name, unlike conftest)."""

from __future__ import annotations

import torch


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
