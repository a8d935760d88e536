"""SWEEP.yaml: which federation to start from, how to split the data, and the grid to run.

Validated like the policy files (the same YAML reader and pydantic error mapping), so a mistake is
reported as `FILE:LINE: field.path: problem (hint)`. Paths are relative to the sweep file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationError

from confide.policies import FederationPolicy, InstitutionPolicy, load_federation, load_institution
from confide.policies.common import StrictModel
from confide.policies.errors import PolicyError, Problem
from confide.policies.federation import MAX_STEPS_PER_ROUND
from confide.policies.institution import MAX_BUDGET_EPSILON as MAX_EPSILON
from confide.policies.loading import problems_from_validation
from confide.policies.yaml_source import read_yaml

BUNDLED_BBC = "bundled:bbc"


def _epsilon(value: object) -> float:
    """A target epsilon: a number in (0, 100], or `inf` (also `.inf`) for training without DP."""
    if isinstance(value, str) and value.strip().lower() in ("inf", ".inf", "infinity"):
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number or `inf`, got {value!r}")
    value = float(value)
    if math.isinf(value) and value > 0:
        return value
    if not 0 < value <= MAX_EPSILON:
        raise ValueError(f"must be in (0, {MAX_EPSILON:g}] or `inf` (no DP), got {value:g}")
    return value


Epsilon = Annotated[float, Field(allow_inf_nan=True), BeforeValidator(_epsilon)]
PositiveInt = Annotated[int, Field(ge=1, le=MAX_STEPS_PER_ROUND)]


class SplitSettings(StrictModel):
    """How one dataset becomes a held-out test set and non-IID institution shards."""

    institutions: int = Field(3, ge=1, le=64, description="Number of generated institutions (site-1..N).")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration of the label split (small: skewed).")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Fraction held out as the common test set.")
    seed: int = Field(0, ge=0, description="Seed of the split (the same split serves every point).")
    source: str | None = Field(
        None,
        description="Dataset to split: a JSONL/CSV file (relative to this file) in the template's format, "
        "or `bundled:bbc`; default: the template institution's data file.",
    )


class Grid(StrictModel):
    """The values to try. Every combination is one point; an axis left out keeps the base policies' value."""

    epsilon: list[Epsilon] = Field(min_length=1, description="Target epsilons per institution; `inf`: no DP.")
    clipping_norm: list[Annotated[float, Field(gt=0, le=1000)]] | None = Field(
        None, min_length=1, description="Per-sample gradient clipping norms.")
    lora_rank: list[Annotated[int, Field(ge=1, le=512)]] | None = Field(
        None, min_length=1, description="LoRA ranks.")
    freeze_a: list[bool] | None = Field(None, min_length=1, description="Freeze A (FFA-LoRA: true) or train it.")
    local_steps: list[PositiveInt] | None = Field(None, min_length=1, description="DP-SGD steps per round.")
    expected_batch_size: list[PositiveInt] | None = Field(
        None, min_length=1, description="Expected Poisson batch sizes (sample rate = batch / records).")
    learning_rate: list[Annotated[float, Field(gt=0, le=10)]] | None = Field(
        None, min_length=1, description="Local learning rates.")
    rounds: list[Annotated[int, Field(ge=1, le=10_000)]] | None = Field(
        None, min_length=1, description="Numbers of federated rounds.")
    seed: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1, description="Federation seeds (initial adapter); DP noise is never seeded.")
    max_length_tokens: list[Annotated[int, Field(ge=8, le=4096)]] | None = Field(
        None, min_length=1, description="Input truncation lengths.")


class Baselines(StrictModel):
    """Reference runs with the same data and budgets, at each epsilon and seed of the grid."""

    alone: bool = Field(True, description="Each institution trains alone (a federation of one).")
    central: bool = Field(True, description="One model trained on the union of the institutions' data.")


class SweepSpec(StrictModel):
    """A privacy-utility sweep: base policies, data split, grid and baselines."""

    kind: Literal["sweep"] = Field(description="Always `sweep` for this kind of file.")
    version: Literal[1] = Field(1, description="Schema version of this file.")
    federation: Path = Field(description="Base federation policy (relative to this file).")
    template: Path = Field(description="Template institution policy copied for every generated institution.")
    split: SplitSettings = Field(default_factory=SplitSettings)
    grid: Grid
    baselines: Baselines = Field(default_factory=Baselines)


class LoadedSweep:
    """A validated sweep file with its base policies loaded."""

    def __init__(self, path: Path, spec: SweepSpec, federation: FederationPolicy, template: InstitutionPolicy):
        self.path = path
        self.spec = spec
        self.federation = federation
        self.template = template

    def describe(self) -> str:
        """One line for `confide policy check`: base policies, the grid and its size, split, baselines."""
        spec = self.spec
        axes = {name: list(dict.fromkeys(values)) for name, values in spec.grid.model_dump().items() if values}
        shown = lambda v: str(v).lower() if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731
        grid = ", ".join(f"{name} {'/'.join(map(shown, values))}" for name, values in axes.items())
        baselines = [name for name, on in spec.baselines.model_dump().items() if on]
        return (f"sweep of federation {self.federation.federation_id} from template {self.template.institution_id}: "
                f"{math.prod(len(v) for v in axes.values())} federated point(s) over {grid}; "
                f"{spec.split.institutions} institutions (Dirichlet alpha {spec.split.alpha:g}); "
                f"baselines {', '.join(baselines) or 'none'}")

    @property
    def source(self) -> str | Path:
        """What the split divides: `bundled:bbc` or a file path."""
        source = self.spec.split.source
        if source is None:
            return self.template.data.path
        if source == BUNDLED_BBC:
            return source
        path = Path(source)
        return path if path.is_absolute() else (self.path.parent / path).resolve()


def load_sweep(path: str | Path) -> LoadedSweep:
    """Read and validate SWEEP.yaml and the policies it names.

    Raises PolicyError listing every problem with its file and line (the sweep file's own, or those
    of the federation or template policy it points at).
    """
    path = Path(path)
    doc = read_yaml(path)
    if not isinstance(doc.data, dict):
        raise PolicyError([Problem(doc.file, 1, "", "the file must be a YAML mapping of keys to values",
                                   "see examples/sweep.yaml")])
    kind = doc.data.get("kind")
    if kind in ("federation", "institution"):  # a policy file passed where the sweep file goes
        raise PolicyError([Problem(doc.file, doc.line_of(("kind",)), "kind",
                                   f"expected a sweep file (kind: sweep), got a {kind} policy",
                                   "pass the sweep file (see examples/sweep.yaml), which names the policies")])
    try:
        spec = SweepSpec.model_validate(doc.data)
    except ValidationError as exc:
        raise PolicyError(problems_from_validation(doc, SweepSpec, exc)) from None
    base = path.parent

    def near(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    federation = load_federation(near(spec.federation))
    template = load_institution(near(spec.template))
    source = spec.split.source
    if source is not None and source != BUNDLED_BBC and not near(Path(source)).exists():
        raise PolicyError([Problem(doc.file, doc.line_of(("split", "source")), "split.source",
                                   f"{near(Path(source))} not found", f"give a data file or `{BUNDLED_BBC}`")])
    return LoadedSweep(path, spec, federation, template)
