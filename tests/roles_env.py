"""A Python for the coordinator's and the auditor's processes: one where the training side is absent.

The coordinator and the auditor install without torch, transformers, peft or Opacus (the `training`
extra). CI proves it on a real environment: `.ci/run` builds a virtualenv from the base requirements
alone and names its interpreter in CONFIDE_ROLES_PYTHON. Elsewhere the test's own interpreter runs
with an import hook that makes those four packages unimportable, as they would be if not installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TRAINING_PACKAGES = ("torch", "transformers", "peft", "opacus")
SRC = Path(__file__).resolve().parents[1] / "src"

_HIDE = """\
import importlib.abc
import sys

HIDDEN = {hidden!r}


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""


def roles_python(workdir: Path) -> tuple[str, dict[str, str]]:
    """The interpreter and environment to run `python -m confide.cli` without the training packages."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    built = os.environ.get("CONFIDE_ROLES_PYTHON")
    if built:
        return built, {**env, "PYTHONPATH": str(SRC)}
    if os.environ.get("CI") == "true":
        raise AssertionError("CI=true but CONFIDE_ROLES_PYTHON is not set: .ci/run builds that environment")
    hook = workdir / "without-training"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_HIDE.format(hidden=TRAINING_PACKAGES))
    return sys.executable, {**env, "PYTHONPATH": f"{hook}{os.pathsep}{SRC}"}
