"""The training objective, per example, and evaluation with it.

DP-SGD bounds each record's influence by clipping that record's gradient. That only works if a
record's gradient depends on that record alone. Hugging Face's built-in causal-LM loss averages
over all tokens of the batch, which makes every example's gradient depend on the others' lengths;
so the loss here is computed per example (mean over its own tokens) and then averaged over the
batch, which Opacus' `loss_reduction="mean"` undoes exactly.

A batch is `(input_ids, attention_mask, labels)`: labels are class indices `[B]` for sequence
classification and token ids `[B, T]` (-100 where ignored) for causal LM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from confide.privacy.errors import TrainingError

TASKS = ("sequence_classification", "causal_lm")
IGNORE_INDEX = -100

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def check_task(task: str) -> str:
    if task not in TASKS:
        raise TrainingError(f"unknown task {task!r}", f"use one of {', '.join(TASKS)}")
    return task


def trim_padding(batch: Batch, task: str) -> Batch:
    """Cut columns that are padding in every example (saves compute; outputs are unchanged).

    Assumes right padding, as the tokenization in `confide.platform.data` produces.
    """
    input_ids, attention_mask, labels = batch
    length = int(attention_mask.sum(dim=1).max().item()) if attention_mask.numel() else 1
    length = max(length, 1)
    if task == "causal_lm":
        labels = labels[:, :length]
    return input_ids[:, :length], attention_mask[:, :length], labels


def per_example_loss(model: nn.Module, batch: Batch, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of each example `[B]` and the number of correct predictions per example `[B]`.

    Sequence classification: cross-entropy of the label; correct is 0/1. Causal LM: mean
    next-token cross-entropy over the example's own tokens; correct counts its right tokens.
    """
    input_ids, attention_mask, labels = batch
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    if task == "sequence_classification":
        losses = F.cross_entropy(logits.float(), labels, reduction="none")
        return losses, (logits.argmax(dim=-1) == labels).float()
    shifted_logits = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    token_losses = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]), targets.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none",
    ).reshape(targets.shape)
    counts = mask.sum(dim=1).clamp(min=1)
    losses = (token_losses * mask).sum(dim=1) / counts
    correct = ((shifted_logits.argmax(dim=-1) == targets) & mask).sum(dim=1).float()
    return losses, correct


def batch_loss(model: nn.Module, batch: Batch, task: str) -> torch.Tensor:
    """Mean over the batch of the per-example losses: what DP-SGD differentiates."""
    losses, _ = per_example_loss(model, batch, task)
    return losses.mean()


def infer_task(dataset: Dataset) -> str:
    """The task a tokenized dataset is for: class labels `[N]` mean classification, token labels `[N, T]` causal LM."""
    labels = dataset[0][2] if len(dataset) else None  # type: ignore[arg-type]
    return "causal_lm" if labels is not None and labels.dim() == 1 else "sequence_classification"


def evaluate(model: nn.Module, dataset: Dataset, task: str | None = None, batch_size: int = 64) -> dict:
    """Mean loss and accuracy of `model` on `dataset`, as `{"loss", "accuracy", "examples"}`.

    Accuracy is the fraction of examples classified right (sequence classification) or of next
    tokens predicted right (causal LM); `task` is inferred from the labels' shape if not given.
    Runs without gradients in eval mode (the mode is restored). The numbers come from local records
    without DP: keep them local. Raises TrainingError for an unknown task.
    """
    task = check_task(task or infer_task(dataset))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, total_correct, total_units, examples = 0.0, 0.0, 0.0, 0
    try:
        with torch.no_grad():
            for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
                batch = tuple(t.to(device) for t in trim_padding(tuple(batch), task))
                losses, correct = per_example_loss(model, batch, task)
                total_loss += float(losses.sum())
                total_correct += float(correct.sum())
                if task == "sequence_classification":
                    total_units += len(losses)
                else:
                    total_units += float((batch[2][:, 1:] != IGNORE_INDEX).sum())
                examples += len(losses)
    finally:
        model.train(was_training)
    if examples == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "examples": 0}
    return {"loss": total_loss / examples, "accuracy": total_correct / max(total_units, 1.0), "examples": examples}
