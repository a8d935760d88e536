"""A zero-shot start for the classifier head: each class's row is the model's embedding of its label name.

A sentence-embedding model puts a text near the names of what it is about. Reading the head's rows
from the label names in the federation file (public: every member has the file) starts training at
the model's zero-shot guess instead of at equal odds, and costs no privacy: no record is read. Under
DP the first steps are the noisiest, so a start that is already right for most records is worth
more the smaller the budget.

Every member must start from identical weights, but floating-point sums may differ in their last
bits across CPUs and libraries. The rows are therefore rounded to a grid of 2^-16, far coarser than
any such difference and far finer than what training moves.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from confide.errors import BadInput

__all__ = ["GRID", "label_name_rows", "resolved_head_init", "set_label_name_head"]

GRID = 2.0 ** -16
"""The initial rows are multiples of this, so that every member computes bit-identical ones."""


def resolved_head_init(head_init: str, pooling: str) -> str:
    """What `adapter.head_init` means once the pooling is known: `auto` is `labels` for mean pooling."""
    if head_init != "auto":
        return head_init
    return "labels" if pooling == "mean" else "zero"


def label_name_rows(encoder: nn.Module, tokenizer: PreTrainedTokenizerBase, labels: list[str],
                    max_length: int) -> torch.Tensor:
    """One row per label: the encoder's pooled output for the label's name (`_` and `-` read as spaces).

    `encoder` is the classifier's backbone with mean pooling installed (its pooler output is the
    L2-normalised masked mean); it runs in eval mode, without gradients, on the CPU.
    """
    names = [label.replace("_", " ").replace("-", " ") for label in labels]
    batch = tokenizer(names, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            output = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        encoder.train(was_training)
    return output.pooler_output.to(torch.float32)


def set_label_name_head(base: nn.Module, head: nn.Module, tokenizer: PreTrainedTokenizerBase,
                        labels: list[str], max_length: int, scale: float) -> None:
    """Set a linear head's rows to `scale` times the label-name embeddings (rounded to GRID), its bias to 0.

    Raises BadInput when the head is not one linear layer over the pooled embedding.
    """
    if not isinstance(head, nn.Linear) or head.out_features != len(labels):
        raise BadInput(f"adapter.head_init labels needs a linear head with one row per label; "
                       f"{type(base).__name__} has {type(head).__name__}", "set adapter.head_init: zero")
    rows = label_name_rows(base.base_model, tokenizer, labels, max_length) * scale
    if rows.shape != head.weight.shape:
        raise BadInput(f"adapter.head_init labels: the label embeddings are {tuple(rows.shape)}, the head "
                       f"{tuple(head.weight.shape)}", "set adapter.head_init: zero")
    with torch.no_grad():
        head.weight.copy_(torch.round(rows / GRID) * GRID)
        if head.bias is not None:
            head.bias.zero_()
