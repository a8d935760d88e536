"""What a classifier on a decoder (Llama family: SmolLM2) reads: one vector per record.

A decoder has no pooler. transformers' `LlamaForSequenceClassification` scores every position and
keeps the last one that is not padding: in a causal model only that position has read the whole
record. `model.pooling` chooses between that and the masked mean of the token states:

- `last`: the last real token's final state (what the model's own classifier reads);
- `mean`: the mean of the final states over the attention mask (every position, each of which has
  read only what came before it): the default (`pooling: auto`), which a linear probe of SmolLM2's
  states found far better at telling BBC News topics apart (0.935 against 0.805).

Either vector is L2-normalised, as the sentence encoder's mean is (`models.MaskedMeanPooler`):
the head then reads features of norm 1 (SmolLM2's final states have norms in the hundreds), so a
record's gradient on the head is bounded whatever the corpus and the head's learning rate means
the same on either pooling. The pooled vector replaces every position's state, so the model's own
last-position selection returns it, and the head's (Opacus') per-record gradients are those of
the pooled vector: only the selected position receives a gradient.
"""

from __future__ import annotations

import torch
from torch import nn

DECODER_POOLINGS = ("last", "mean")


def is_decoder(base: nn.Module) -> bool:
    """A Llama-family model: token embeddings (`embed_tokens`) and a list of decoder `layers`."""
    inner = getattr(base, "base_model", base)
    return hasattr(inner, "embed_tokens") and isinstance(getattr(inner, "layers", None), nn.ModuleList)


def pool_states(hidden: torch.Tensor, mask: torch.Tensor | None, kind: str) -> torch.Tensor:
    """`[B, H]`: each record's `last` real state or `mean` state over `mask` (`[B, T]`, right padding).

    L2-normalised. A missing mask counts every position.
    """
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    mask = mask[:, : hidden.shape[1]].to(hidden.device)
    if kind == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    else:
        last = (mask.long().sum(dim=1) - 1).clamp(min=0)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return nn.functional.normalize(pooled, dim=-1)


class DecoderPooler:
    """Forward hooks on the decoder (`LlamaModel`): remember the call's mask, then pool its output."""

    def __init__(self, kind: str) -> None:
        if kind not in DECODER_POOLINGS:
            raise ValueError(f"decoder pooling {kind!r}: use one of {DECODER_POOLINGS}")
        self.kind = kind
        self.mask: torch.Tensor | None = None

    def take_mask(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)

    def pool(self, _module: nn.Module, _args: tuple, _kwargs: dict, output):
        mask, self.mask = self.mask, None
        hidden = output.last_hidden_state
        pooled = pool_states(hidden, mask, self.kind)
        output.last_hidden_state = pooled.unsqueeze(1).expand_as(hidden)
        return output


def use_decoder_pooling(base: nn.Module, kind: str) -> None:
    """Make a decoder classifier (e.g. LlamaForSequenceClassification) read the `kind` pooling of its states."""
    pooler = DecoderPooler(kind)
    decoder = base.base_model
    # Bound methods, not closures: a deep copy of the model then hands its own pooler the mask.
    decoder.register_forward_pre_hook(pooler.take_mask, with_kwargs=True)
    decoder.register_forward_hook(pooler.pool, with_kwargs=True)
