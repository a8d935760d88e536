"""The institution policy: what one institution's agent will and will not do with its data."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from confide.policies.common import FieldProblem, Identifier, StrictModel

MAX_BUDGET_EPSILON = 100.0
"""The largest epsilon budget an institution policy accepts (sweeps and `calibrate` keep to it too)."""


class DataSource(StrictModel):
    """Where the institution's records are and which fields hold text and label."""

    dataset_id: Identifier | None = Field(
        None,
        description="Stable name of this dataset: its privacy budget and ledger belong to this id across every "
        "version of the data (records added, removed, relabelled). Default: the institution id, i.e. one budget "
        "for all data this institution brings.",
    )
    path: Path = Field(description="JSONL, CSV or Parquet file, or the folder of a Hugging Face dataset saved with "
                       "`save_to_disk`; a relative path is relative to this policy file.")
    format: Literal["jsonl", "csv", "parquet", "hf_dataset"] = Field(
        description="File format: `jsonl`, `csv`, `parquet` or `hf_dataset` (the last two need confide[data]).")
    text_field: str = Field("text", min_length=1, description="Field holding the input text.")
    label_field: str = Field("label", min_length=1, description="Field holding the label (one of the federation's).")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Fraction of records kept aside for local evaluation.")


class PrivacyBudget(StrictModel):
    """The total (epsilon, delta) this dataset may ever spend, across all federations."""

    epsilon: float = Field(gt=0, le=MAX_BUDGET_EPSILON, description="Total epsilon budget for this dataset.")
    delta: float = Field(gt=0, lt=1, description="Largest delta this institution accepts.")


class Acceptance(StrictModel):
    """Which federations and base models this institution agrees to work with."""

    federations: list[str] = Field(
        default_factory=lambda: ["*"], min_length=1, description="Federation ids it may join; `*` accepts any."
    )
    base_models: list[str] = Field(
        default_factory=lambda: ["*"], min_length=1, description="Model sources it may fine-tune; `*` accepts any."
    )


class InstitutionPolicy(StrictModel):
    """An institution's own rules. Its agent enforces them whatever the coordinator asks."""

    kind: Literal["institution"] = Field(description="Always `institution` for this kind of file.")
    version: Literal[1] = Field(1, description="Schema version of this file.")
    institution_id: Identifier = Field(description="This institution's id, as in federation rosters.")
    data: DataSource
    budget: PrivacyBudget
    round_epsilon_cap: float | None = Field(None, gt=0, description="Most epsilon to spend in any one round.")
    clipping_norm: float = Field(1.0, gt=0, le=1000, description="Per-sample gradient L2 clipping bound.")
    accepts: Acceptance = Field(default_factory=Acceptance)
    min_cohort: int = Field(
        2, ge=1, description="Only contribute to, and only apply, sums of at least this many institutions."
    )
    max_rounds: int = Field(100, ge=1, description="Most rounds to take part in, per federation.")
    require_encryption: bool = Field(True, description="Refuse any federation that does not encrypt updates.")
    allow_release: bool = Field(
        False, description="May the final adapter be released to the coordinator. Admission still checks it, but "
        "this version has no release: a federation file that asks for one is refused at `policy check`.")
    state_dir: Path = Field(
        description="Where the agent keeps its ledger, identity, keys and adapters; relative to this file."
    )
    identity_dir: Path | None = Field(
        None, description="Identity from `confide keys init` (default: state_dir/identity).")
    ledger_witness_dirs: list[Path] = Field(
        default_factory=list,
        description="Further directories, ideally on another disk or host, that keep a copy of the ledger's head "
        "(seq and hash) so that a ledger restored from an older backup is noticed even with no coordinator at hand; "
        "relative to this file.",
    )

    @model_validator(mode="after")
    def _cap_within_budget(self) -> "InstitutionPolicy":
        if self.round_epsilon_cap is not None and self.round_epsilon_cap > self.budget.epsilon:
            raise FieldProblem(
                ("round_epsilon_cap",),
                f"{self.round_epsilon_cap} is larger than the total budget ({self.budget.epsilon})",
            )
        return self

    def accepts_federation(self, federation_id: str) -> bool:
        return "*" in self.accepts.federations or federation_id in self.accepts.federations

    def accepts_model(self, source: str) -> bool:
        return "*" in self.accepts.base_models or source in self.accepts.base_models

    @property
    def dataset_id(self) -> str:
        """The id the privacy budget and ledger belong to (`data.dataset_id`, else the institution id)."""
        return self.data.dataset_id or self.institution_id

    @property
    def identity_path(self) -> Path:
        return self.identity_dir if self.identity_dir is not None else self.state_dir / "identity"
