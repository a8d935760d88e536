"""Test tiers, enforced rather than promised.

`make test-fast` runs `pytest -m "not integration"`: unit tests that start no process (no
subprocess, no multiprocessing or spawned workers, hence no Ray and no Chromium) and load no real
model weights. A unit test that tries is failed with a message saying to mark it `integration`,
so the fast tier stays fast and cannot drift into a second full suite.
"""

import multiprocessing.process
import os
import subprocess

import pytest

# Tests run on small CPUs: keep torch from oversubscribing the cores other tests or processes use.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_MARK_IT = "mark the test (or its module, with pytestmark) `integration`"


def pytest_configure(config):
    """Build matplotlib's font cache before any test runs: on a machine without one (a fresh
    install), the first plot a unit test draws would run fc-list, a subprocess the unit tier refuses."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import font_manager

    font_manager.findfont("DejaVu Sans")


class UnitTestBoundary(AssertionError):
    """A test outside the integration tier did what only integration tests may do."""


def _refuse(what: str):
    def refuse(*_args, **_kwargs):
        raise UnitTestBoundary(f"a unit test {what}: {_MARK_IT}")

    return refuse


@pytest.fixture(autouse=True)
def _unit_tests_stay_in_process(request, monkeypatch):
    if request.node.get_closest_marker("integration") is not None:
        return
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("started a subprocess"))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", _refuse("started a worker process"))
    from confide.platform import models  # imports torch and transformers once per session

    # Tiny models a test saves may load; the bundled checkpoint may not.
    for name in ("AutoModelForSequenceClassification", "AutoModelForCausalLM"):
        _refuse_the_bundled_checkpoint(monkeypatch, models, name)


def _refuse_the_bundled_checkpoint(monkeypatch, models, name: str) -> None:
    auto = getattr(models, name)
    load = auto.from_pretrained
    bundled = set()
    for path in (models.bundled_minilm_path, models.bundled_smollm2_path):
        try:
            bundled.add(os.path.realpath(path()))
        except models.ModelLoadError:
            pass  # not installed: nothing real to load
    if not bundled:
        return

    def guarded(directory, *args, **kwargs):
        if os.path.realpath(directory) in bundled:
            raise UnitTestBoundary(f"a unit test loaded the real bundled model ({name}): {_MARK_IT}")
        return load(directory, *args, **kwargs)

    monkeypatch.setattr(auto, "from_pretrained", guarded)
