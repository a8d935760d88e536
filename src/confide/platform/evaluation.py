"""Scoring a classifier: accuracy, macro-F1 and per-class accuracy from one confusion matrix.

Accuracy alone hides a class the model never gets right (a federation member that lacks a class
is exactly that case), so every score carries the confusion matrix it came from. Matrices from
several evaluations (e.g. each member's local eval split) add up, and the scores are computed
from the sum, never averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from confide.privacy.objective import trim_padding


def confusion_matrix(model: nn.Module, dataset: Dataset, classes: int, batch_size: int = 64) -> tuple[list[list[int]],
                                                                                                      float]:
    """`(matrix, summed loss)` of `model` on `dataset` (`(input_ids, attention_mask, labels)` records).

    `matrix[true][predicted]` counts records; the loss is the summed cross-entropy. Runs without
    gradients in eval mode (the mode is restored).
    """
    device = next(model.parameters()).device
    matrix = torch.zeros(classes, classes, dtype=torch.long)
    loss = 0.0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
                input_ids, attention_mask, labels = (t.to(device) for t in trim_padding(tuple(batch),
                                                                                       "sequence_classification"))
                logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
                loss += float(F.cross_entropy(logits, labels, reduction="sum"))
                pairs = labels.cpu() * classes + logits.argmax(dim=-1).cpu()
                matrix += torch.bincount(pairs, minlength=classes * classes).view(classes, classes)
    finally:
        model.train(was_training)
    return matrix.tolist(), loss


def scores(matrix: list[list[int]], labels: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class accuracy (recall) from a confusion matrix `[true][predicted]`.

    A class absent from the evaluated records has per-class accuracy None and is left out of the
    macro-F1 (which averages over the classes present). Everything is None for an empty matrix.
    """
    total = sum(map(sum, matrix))
    if total == 0:
        return {"accuracy": None, "macro_f1": None, "per_class_accuracy": {name: None for name in labels}}
    correct = sum(matrix[i][i] for i in range(len(labels)))
    per_class, f1s = {}, []
    for i, name in enumerate(labels):
        support = sum(matrix[i])
        predicted = sum(row[i] for row in matrix)
        if support == 0:
            per_class[name] = None
            continue
        recall = matrix[i][i] / support
        precision = matrix[i][i] / predicted if predicted else 0.0
        per_class[name] = recall
        f1s.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return {"accuracy": correct / total, "macro_f1": sum(f1s) / len(f1s), "per_class_accuracy": per_class}


def add_matrices(matrices: list[list[list[int]]]) -> list[list[int]]:
    """The element-wise sum of equally sized confusion matrices."""
    size = len(matrices[0])
    return [[sum(m[i][j] for m in matrices) for j in range(size)] for i in range(size)]


def evaluate_classifier(model: nn.Module, dataset: Dataset, labels: list[str], batch_size: int = 64) -> dict:
    """`{"loss", "accuracy", "macro_f1", "per_class_accuracy", "confusion", "examples"}` of `model` on `dataset`.

    The loss is the mean cross-entropy (NaN for an empty dataset). Computed on local records
    without DP: like any evaluation, keep it where the records are unless it is on a public test set.
    """
    matrix, loss = confusion_matrix(model, dataset, len(labels), batch_size)
    examples = sum(map(sum, matrix))
    return {"loss": loss / examples if examples else float("nan"), **scores(matrix, labels), "confusion": matrix,
            "examples": examples}
