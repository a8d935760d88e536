"""Classifier scores: accuracy, macro-F1 and per-class accuracy come from one confusion matrix."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from confide.platform.evaluation import add_matrices, evaluate_classifier, scores


def test_scores_follow_the_definitions_of_recall_precision_and_f1():
    matrix = [[2, 0], [1, 1]]  # class a: 2 of 2 right; class b: 1 of 2 right, once taken for a
    found = scores(matrix, ["a", "b"])
    f1_a = 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)
    f1_b = 2 * 1.0 * 0.5 / (1.0 + 0.5)
    assert found["accuracy"] == pytest.approx(3 / 4)
    assert found["per_class_accuracy"] == {"a": 1.0, "b": 0.5}
    assert found["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)


def test_a_class_absent_from_the_records_is_left_out_of_macro_f1():
    found = scores([[3, 0, 0], [0, 0, 0], [1, 0, 1]], ["a", "b", "c"])
    assert found["per_class_accuracy"]["b"] is None
    assert found["macro_f1"] == pytest.approx((2 * 0.75 / 1.75 + 2 * 0.5 / 1.5) / 2)
    assert scores([[0, 0], [0, 0]], ["a", "b"])["accuracy"] is None


def test_matrices_from_several_evaluations_add_before_scoring():
    assert add_matrices([[[1, 0], [0, 2]], [[0, 1], [3, 0]]]) == [[1, 1], [3, 2]]


class _Fixed(torch.nn.Module):
    """Predicts class 1 for every record whose first token is odd, class 0 otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        odd = (input_ids[:, 0] % 2).float()
        return type("Out", (), {"logits": torch.stack([1 - odd, odd], dim=1) + self.weight})()


def test_evaluate_classifier_counts_each_record_once_by_true_and_predicted_class():
    ids = torch.tensor([[1, 1], [2, 1], [3, 1], [4, 1]])
    data = TensorDataset(ids, torch.ones_like(ids), torch.tensor([1, 0, 0, 0]))
    result = evaluate_classifier(_Fixed(), data, ["even", "odd"], batch_size=3)
    assert result["confusion"] == [[2, 1], [0, 1]]
    assert result["accuracy"] == pytest.approx(3 / 4) and result["examples"] == 4
