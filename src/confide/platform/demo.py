"""`confide demo`: a real federation on real data, and what federating bought each institution.

Three hospital-like institutions hold non-IID shares of the BBC News corpus and have different
budgets (examples/hospital-{a,b,c}.yaml: epsilon 3, 5 and 8). They fine-tune the bundled MiniLM-L6
with frozen-A LoRA under DP-SGD and CKKS-encrypted aggregation (examples/federation.yaml). Then
each institution trains alone under exactly the same privacy settings (a federation of one), and
all models are scored on the same held-out test set.

`--example smollm2` does the same for a causal LM on a real pretrained language model: the three
hospitals, each holding the articles of its own specialties (SMOLLM2_TOPICS), adapt SmolLM2-135M-Instruct
to them (examples/federation-smollm2.yaml, budgets 3, 5 and 8), and the zero-shot base, each hospital
alone and the federation are scored by perplexity on one held-out set of articles of every topic
(every third of the demo's test split, to fit the run in 15 minutes on two cores).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from confide.errors import BadInput
from confide.platform.corpus import bbc_records
from confide.platform.events import Phase, ProgressEvent, RoundSettled
from confide.platform.simulation import Simulation, run_simulation
from confide.platform.split import SMOLLM2_TOPICS, split_to_files, write_specialties
from confide.policies import FederationPolicy, InstitutionPolicy, load_federation, load_institution

DEMO_INSTITUTIONS = ["hospital-a", "hospital-b", "hospital-c"]
# Dirichlet(0.5) with this seed gives three shares of similar size (636, 592, 553 articles) that each
# nearly lack one class (tech, entertainment, politics): the situation federation is for.
SPLIT_ALPHA = 0.5
TEST_FRACTION = 0.2
SPLIT_SEED = 4
DEMO_DATA_FILES = [*DEMO_INSTITUTIONS, *SMOLLM2_TOPICS, "test"]


class DemoError(BadInput):
    """The demo cannot find its example files."""


@dataclass(frozen=True)
class DemoExample:
    """One runnable example: its policy files (in the examples folder) and its held-out set."""

    name: str
    federation_file: str
    institution_files: tuple[str, ...]
    test_stride: int
    """Score on every this-many-th record of data/test.jsonl (1: all of them). The file is grouped by
    topic, so a stride keeps every topic's share where a prefix would hold only the first topics."""
    title: str
    """What the plot says it shows."""


EXAMPLES = {
    "bbc": DemoExample("bbc", "federation.yaml", tuple(f"{n}.yaml" for n in DEMO_INSTITUTIONS), 1,
                       "BBC News, MiniLM-L6 + LoRA under DP: federated vs alone"),
    "smollm2": DemoExample("smollm2", "federation-smollm2.yaml",
                           tuple(f"smollm2-{n}.yaml" for n in DEMO_INSTITUTIONS), 3,
                           "BBC News text, SmolLM2-135M + LoRA under DP: federated vs alone"),
}


def demo_example(name: str) -> DemoExample:
    """The example called `name`. Raises DemoError naming the ones there are."""
    if name not in EXAMPLES:
        raise DemoError(f"--example {name!r} is not an example", f"use one of {', '.join(EXAMPLES)}")
    return EXAMPLES[name]


def default_examples_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "examples"


@dataclass
class DemoResult:
    federated: dict
    local: dict[str, dict]
    seconds: float
    example: str = "bbc"
    zero_shot: dict | None = None
    """Causal LM: the base model (the initial adapter is a no-op) scored on the same held-out set."""

    def to_dict(self) -> dict:
        return {"example": self.example, "zero_shot": self.zero_shot, "federated": self.federated,
                "local": self.local, "seconds": self.seconds}


def ensure_demo_data(examples_dir: Path) -> Path:
    """Write the BBC split the example policies point at (examples/data) unless it is already there."""
    data_dir = examples_dir / "data"
    if not all((data_dir / f"{n}.jsonl").exists() for n in DEMO_DATA_FILES):
        write_demo_data(bbc_records(), data_dir)
    return data_dir


def write_demo_data(records: list[dict], data_dir: Path) -> None:
    """Both examples' data from one split of labelled `records`: one held-out test.jsonl; the training
    articles as the bbc example's Dirichlet shares (hospital-*.jsonl) and as the smollm2 example's
    specialties (smollm2-hospital-*.jsonl). Raises SplitError if `records` cannot be split so."""
    parts = split_to_files(records, data_dir, DEMO_INSTITUTIONS, SPLIT_ALPHA, TEST_FRACTION, SPLIT_SEED)
    write_specialties(parts, data_dir)


def demo_policies(examples_dir: Path, fast: bool, example: str = "bbc"
                  ) -> tuple[FederationPolicy, list[InstitutionPolicy]]:
    """The example federation and institutions; `fast` shortens training for a first look."""
    chosen = demo_example(example)
    if not (examples_dir / chosen.federation_file).exists():
        raise DemoError(f"{examples_dir}/{chosen.federation_file} not found",
                        "run from the repository or pass --examples DIR")
    federation = load_federation(examples_dir / chosen.federation_file)
    institutions = [load_institution(examples_dir / name) for name in chosen.institution_files]
    if fast:
        data = federation.model_dump(mode="json")
        data["rounds"] = 2
        data["training"]["steps_per_round"] = min(6, data["training"]["steps_per_round"])
        data["model"]["max_length_tokens"] = min(32, data["model"]["max_length_tokens"])
        federation = FederationPolicy.model_validate(data)
    return federation, institutions


def _alone(federation: FederationPolicy, institution: InstitutionPolicy) -> tuple[FederationPolicy, InstitutionPolicy]:
    """A federation of one: the same model, rounds, steps and privacy, with nobody to average with."""
    data = federation.model_dump(mode="json")
    data["federation_id"] = f"{federation.federation_id}-{institution.institution_id}-alone"
    data["roster"] = [m.model_dump() for m in federation.roster if m.id == institution.institution_id]
    data["key_holder"] = institution.institution_id
    data["min_institutions"] = 1
    solo = institution.model_copy(update={
        "min_cohort": 1,
        "accepts": institution.accepts.model_copy(update={"federations": [data["federation_id"]]}),
    })
    return FederationPolicy.model_validate(data), solo


def zero_shot_scores(federation: FederationPolicy, test: list[dict]) -> dict:
    """The base model's loss, next-token accuracy and perplexity on `test` (a causal LM, before any round).

    Built exactly as every member builds it: the LoRA B matrices start at zero, so this is the
    pretrained model itself. Nothing is trained and no privacy is spent (the test set is public here).
    """
    import torch

    from confide.platform.data import Record, tokenize
    from confide.platform.models import build_adapter_model
    from confide.privacy.objective import evaluate

    built = build_adapter_model(federation, torch.device("cpu"))
    records = [Record(row["text"], None, line) for line, row in enumerate(test, start=1)]
    scores = evaluate(built.model, tokenize(records, built.tokenizer, federation.model), "causal_lm")
    return {**scores, "perplexity": math.exp(scores["loss"])}


def run_demo(
    out_dir: Path,
    examples_dir: Path | None = None,
    fast: bool = False,
    workers: int | None = None,
    on_event: Callable[[str, ProgressEvent], None] | None = None,
    example: str = "bbc",
) -> DemoResult:
    """Run the federated demo and the local-only baselines.

    Writes OUT/demo.json, OUT/accuracy.png (accuracy per round) and OUT/confusion.png (the final
    round's confusion matrices on the test set: the federation's and each institution's alone).
    `workers` defaults to one process per institution: with fewer, one process trains two members
    one after the other while another waits (238-244 s for the federation with 2 workers on 2 cores,
    166 s with 3, where each worker gets cores / workers threads, at least one).
    """
    started = time.perf_counter()
    examples_dir = examples_dir or default_examples_dir()
    data_dir = ensure_demo_data(examples_dir)
    from confide.platform.data import read_records

    chosen = demo_example(example)
    federation, institutions = demo_policies(examples_dir, fast, example)
    workers = len(institutions) if workers is None else workers
    test = read_records(data_dir / "test.jsonl", "jsonl", "text", "label")[:: chosen.test_stride]
    for sub in ("federated", "local"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)  # the demo's own previous output
    emit = on_event or (lambda stage, event: None)
    zero_shot = None
    if federation.model.task == "causal_lm":
        emit("zero-shot", Phase(f"scoring the base model on {len(test)} held-out records"))
        zero_shot = zero_shot_scores(federation, test)
        emit("zero-shot", RoundSettled(0, f"perplexity {zero_shot['perplexity']:.1f}"))
    # The examples' data is generated for the demo, which trains on it three times (federated, each alone):
    # its ledgers are registered under OUT, not in the example institutions' registries.
    federated = run_simulation(Simulation(federation, institutions, out_dir / "federated", test, workers,
                                          on_event=lambda e: emit("federated", e), own_registry=True))
    local: dict[str, dict] = {}
    for institution in institutions:
        solo_fed, solo_inst = _alone(federation, institution)
        local[institution.institution_id] = run_simulation(Simulation(
            solo_fed, [solo_inst], out_dir / "local" / institution.institution_id, test, 0,
            on_event=lambda e, i=institution.institution_id: emit(i, e), own_registry=True))
    result = DemoResult(federated, local, round(time.perf_counter() - started, 1), example, zero_shot)
    (out_dir / "demo.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    if zero_shot is None:
        plot_accuracy(result, out_dir / "accuracy.png", chosen.title)
        plot_confusion(result, federation.model.labels, out_dir / "confusion.png")
    else:
        plot_perplexity(result, out_dir / "perplexity.png", chosen.title)
    return result


def final_perplexity(summary: dict) -> float | None:
    """exp of the last evaluated round's mean per-record token loss (causal LM)."""
    last = _last_scored(summary)
    return None if last is None or last["loss"] is None else math.exp(last["loss"])


def _last_scored(summary: dict) -> dict | None:
    scored = [r for r in summary["rounds"] if r["accuracy"] is not None]
    return scored[-1] if scored else None


def final_accuracy(summary: dict) -> float | None:
    last = _last_scored(summary)
    return None if last is None else last["accuracy"]


def final_macro_f1(summary: dict) -> float | None:
    last = _last_scored(summary)
    return None if last is None else last.get("macro_f1")


def plot_confusion(result: DemoResult, labels: list[str], path: Path) -> None:
    """The last evaluated round's confusion matrix on the test set, row-normalised: federated, then each alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("federated", result.federated)] + [(f"{name} alone", s) for name, s in result.local.items()]
    panels = [(title, _last_scored(s)) for title, s in panels]
    panels = [(title, last) for title, last in panels if last is not None and last.get("confusion")]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.6), squeeze=False)
    for ax, (title, last) in zip(axes[0], panels):
        counts = last["confusion"]
        rows = [[c / max(1, sum(row)) for c in row] for row in counts]
        ax.imshow(rows, vmin=0, vmax=1, cmap="Blues")
        for i, row in enumerate(counts):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if rows[i][j] > 0.5 else "black")
        ax.set_xticks(range(len(labels)), [name[:5] for name in labels], fontsize=7, rotation=45)
        ax.set_yticks(range(len(labels)), [name[:5] for name in labels], fontsize=7)
        f1 = last.get("macro_f1")
        ax.set_title(f"{title}\nacc {last['accuracy']:.3f}" + ("" if f1 is None else f", macro-F1 {f1:.3f}"),
                     fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
    axes[0][0].set_ylabel("true class", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_perplexity(result: DemoResult, path: Path, title: str) -> None:
    """Held-out perplexity after each round: the federation against each institution alone and the base."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(summary: dict) -> tuple[list[int], list[float]]:
        rounds = [r for r in summary["rounds"] if r["loss"] is not None]
        return [0] + [r["round"] for r in rounds], [base] + [math.exp(r["loss"]) for r in rounds]

    base = result.zero_shot["perplexity"] if result.zero_shot else float("nan")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(*series(result.federated), "o-", lw=2.5, label="federated (CKKS + DP)")
    for name, summary in result.local.items():
        eps = summary["institutions"][name]["epsilon"]
        ax.plot(*series(summary), "--", marker=".", label=f"{name} alone (eps {eps:.2f})")
    ax.axhline(base, color="grey", lw=1, label="zero-shot base")
    ax.set_xlabel("round (0: the base model)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("perplexity on the held-out articles")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy(result: DemoResult, path: Path, title: str = EXAMPLES["bbc"].title) -> None:
    """Test accuracy after each round: the federation against each institution alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    rounds = result.federated["rounds"]
    ax.plot([r["round"] for r in rounds], [r["accuracy"] for r in rounds], "o-", lw=2.5, label="federated (CKKS + DP)")
    for name, summary in result.local.items():
        eps = summary["institutions"][name]["epsilon"]
        ax.plot([r["round"] for r in summary["rounds"]], [r["accuracy"] for r in summary["rounds"]], "--", marker=".",
                label=f"{name} alone (eps {eps:.2f})")
    ax.set_xlabel("round")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("accuracy on the common test set")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
