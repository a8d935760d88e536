"""The fast tier's boundary (tests/conftest.py) holds: a unit test cannot start processes or load real weights."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys

import pytest

from tests.conftest import UnitTestBoundary


def test_a_unit_test_cannot_start_a_subprocess():
    with pytest.raises(UnitTestBoundary, match="integration"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)


def test_a_unit_test_cannot_start_a_worker_process():
    with pytest.raises(UnitTestBoundary, match="integration"):
        multiprocessing.get_context("spawn").Process(target=print).start()


def test_a_unit_test_cannot_load_the_bundled_model():
    from confide.platform import models

    with pytest.raises(UnitTestBoundary, match="bundled model"):
        models.AutoModelForSequenceClassification.from_pretrained(models.bundled_minilm_path(), num_labels=2)


def test_a_unit_test_cannot_load_the_bundled_causal_lm():
    from confide.platform import models

    with pytest.raises(UnitTestBoundary, match="bundled model"):
        models.AutoModelForCausalLM.from_pretrained(models.bundled_smollm2_path(),
                                                    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.integration
def test_an_integration_test_may_start_a_subprocess():
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0
