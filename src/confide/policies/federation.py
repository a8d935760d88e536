"""The federation policy: the coordinator's file that says who takes part and how rounds run."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import Field, model_validator

from confide.policies.ckks import CkksParameters
from confide.policies.common import FieldProblem, Identifier, PublicKeyB64, StrictModel

MAX_STEPS_PER_ROUND = 1_000_000
"""The most DP-SGD steps a round may take (a spend recording more is not a confide round)."""


class RosterMember(StrictModel):
    """One member institution and the public half of its identity (from `confide keys init`)."""

    id: Identifier = Field(description="The institution's id; must equal `institution_id` in its own policy.")
    signing_key: PublicKeyB64 = Field(description="Ed25519 public key (base64) that verifies its requests and ledger.")
    sealing_key: PublicKeyB64 = Field(description="X25519 public key (base64) the CKKS secret key is sealed to.")
    weight: float = Field(
        1.0, gt=0, le=1e6,
        description="The member's weight in the federated average. Public: every member checks the sum's total "
        "weight against its contributors' weights here, so none can steer the average by claiming more. It "
        "must not come from the data: the default 1 averages members equally and reveals nothing about records.",
    )


class ModelSettings(StrictModel):
    """The foundation model everyone fine-tunes, and the task."""

    source: str = Field(
        description="`bundled:minilm-l6` (a sentence encoder), `bundled:smollm2-135m` (a pretrained causal LM), "
        "`random:tiny-bert`, `random:tiny-gpt2`, `random:tiny-llama`, or a local Hugging Face directory.",
        min_length=1,
    )
    task: Literal["sequence_classification", "causal_lm"] = Field(
        "sequence_classification", description="What the adapter is trained for."
    )
    labels: list[str] = Field(
        default_factory=list,
        description="Class names for sequence classification, in output order; records' labels must be among them.",
    )
    max_length_tokens: int = Field(128, ge=8, le=4096, description="Inputs are truncated to this many tokens.")
    pooling: Literal["auto", "mean", "cls", "last"] = Field(
        "auto",
        description="What the classifier reads (sequence classification): `mean`, the average of the token "
        "states over the attention mask, L2-normalised (what sentence-embedding models such as all-MiniLM-L6-v2 "
        "are trained for); `cls`, an encoder's own pooler over the first token; `last` (decoders such as "
        "bundled:smollm2-135m), the last real token's state, L2-normalised; `auto`, `mean` for "
        "bundled:minilm-l6, sentence-transformers directories (a modules.json with a Pooling module) and "
        "decoders, `cls` for anything else.",
    )

    @model_validator(mode="after")
    def _labels_fit_task(self) -> "ModelSettings":
        if self.task == "causal_lm" and self.pooling != "auto":
            raise FieldProblem(("pooling",), "has no effect for causal_lm (nothing is pooled)", "remove the line")
        if self.task == "sequence_classification":
            if len(self.labels) < 2:
                raise FieldProblem(("labels",), "sequence_classification needs at least 2 labels")
            for index, label in enumerate(self.labels):
                if label in self.labels[:index]:
                    raise FieldProblem(("labels", index), f"duplicate label {label!r}")
        return self


class AdapterSettings(StrictModel):
    """LoRA settings (peft `LoraConfig`)."""

    rank: int = Field(8, ge=1, le=512, description="LoRA rank r.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator; the update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input during training.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["query", "value"], min_length=1, description="Names of the modules LoRA wraps."
    )
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1,
        description="Indices of the transformer layers whose target modules LoRA wraps (None: every layer). "
        "The last few layers train at a fraction of the cost: backpropagation stops below the lowest one.",
    )
    freeze_a: bool = Field(
        True,
        description="Freeze the A matrices and train B only (FFA-LoRA): the federated average is then exact "
        "and DP noise is not multiplied across two factors.",
    )
    head_init: Literal["auto", "labels", "zero", "normal"] = Field(
        "auto",
        description="Initial classifier head (sequence classification; trained with the LoRA matrices): "
        "`labels` sets each class's row to the model's own pooled embedding of its label name, times "
        "`head_init_scale` (a zero-shot start that costs no privacy: the names are in this file); `zero` "
        "starts every class at equal odds, so no DP step is spent undoing a random projection; `normal` draws "
        "it from N(0, the model's initializer_range) with the federation seed. `auto`: `labels` when the head "
        "reads mean-pooled sentence embeddings (model.pooling resolves to mean), `zero` otherwise.",
    )
    head_bias: Literal["frozen", "trained"] = Field(
        "frozen",
        description="The classifier head's bias (sequence classification): `frozen` keeps it at 0 and trains the "
        "rows only; `trained` trains it too. Adam moves every weight by about its learning rate per step, "
        "noise or not, and each bias step shifts that class's logit for every record alike (a random walk of the "
        "class priors under DP); frozen, the rows still carry a class prior along the features' common "
        "direction.",
    )
    head_init_scale: float = Field(
        4.0, gt=0, le=100,
        description="With `head_init: labels`, the initial logits are this times the cosine between a "
        "record's embedding and each label name's.",
    )


ADAMW_BETAS = (0.9, 0.999)
"""AdamW's moment decays in every member's local training (torch's defaults, fixed here because the
bound on an honest round's update, `confide.platform.update_bound`, is derived from them)."""
ADAMW_WEIGHT_DECAY = 0.01
"""AdamW's decoupled weight decay in every member's local training (torch's default)."""


class LocalTraining(StrictModel):
    """What each institution does locally in one round (DP-SGD)."""

    steps_per_round: int = Field(8, ge=1, le=MAX_STEPS_PER_ROUND, description="Optimizer steps per round.")
    expected_batch_size: int = Field(
        128, ge=1,
        description="Expected logical batch size; the Poisson sample rate is this over the dataset size (at most 1). "
        "Large batches drown less in DP noise: the noise is added once per step, whatever the batch.",
    )
    max_physical_batch_size: int = Field(16, ge=1, description="Largest batch held in memory at once.")
    learning_rate: float = Field(
        0.1, gt=0, le=10,
        description="Optimizer learning rate. Adam on a head over unit-norm pooled embeddings needs a large step: "
        "it moves each weight by about this much per step, whatever the noise's scale.",
    )
    adapter_learning_rate: float | None = Field(
        0.02, gt=0, le=10,
        description="Learning rate of the LoRA matrices; `learning_rate` is then the head's (and any other trained "
        "module's). A smaller step for the adapter keeps the noise from moving the features the head reads faster "
        "than the head can follow. None: `learning_rate` for everything.",
    )
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="Local optimizer.")


class ServerUpdate(StrictModel):
    """How every member applies a round's decrypted average to the shared adapter (FedAvgM).

    velocity <- momentum * velocity + average; adapter <- adapter + learning_rate * velocity. Every
    member decrypts the same sum and applies the same arithmetic, so their adapters stay identical;
    the velocity is saved with each round's adapter. `momentum: 0` with `learning_rate: 1` is FedAvg.
    """

    momentum: float = Field(
        0.0, ge=0, lt=1,
        description="Server momentum: how much of the previous rounds' update carries into this one.",
    )
    learning_rate: float = Field(
        1.0, gt=0, le=10, description="Server learning rate: the step taken along the velocity.",
    )


class PrivacyRequirements(StrictModel):
    """What every member's DP-SGD must satisfy."""

    delta: float = Field(1e-5, gt=0, lt=1, description="The delta every member accounts with.")
    accountant: Literal["pld", "rdp"] = Field("pld", description="Accountant used to compute epsilon (dp_accounting).")
    min_noise_multiplier: float = Field(0.0, ge=0, description="Smallest noise multiplier a member may use.")
    max_round_epsilon: float | None = Field(
        None, gt=0, description="Most epsilon any member may spend in one round (None: no federation-wide cap)."
    )


class ReleaseRules(StrictModel):
    """Whether the final adapter may leave the key holders.

    This version has no release to the coordinator (DESIGN step 6: only if every member's policy
    allows it, noise-flooded against the decryption noise, rounded, counted per key). Until it does,
    `to_coordinator: true` is refused here, at `confide policy check`, rather than accepted and not
    honoured; `max_releases_per_key`, which only such a release would read, is refused too.
    """

    to_coordinator: bool = Field(
        False, description="Release the final adapter to the coordinator: not available in this version, "
        "only `false` is accepted (the adapter stays with the members, each saves it in PEFT format)."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_release_counter_yet(cls, data):
        if isinstance(data, dict) and "max_releases_per_key" in data:
            raise FieldProblem(("max_releases_per_key",), "has no effect: this version releases nothing to the "
                               "coordinator, so there is nothing to count", "remove the line")
        return data

    @model_validator(mode="after")
    def _no_release_yet(self) -> "ReleaseRules":
        if self.to_coordinator:
            raise FieldProblem(("to_coordinator",), "releasing the final adapter to the coordinator is not "
                               "available in this version", "set `to_coordinator: false`: the adapter stays with "
                               "the members, each saves it in PEFT format")
        return self


class SecureAggregation(StrictModel):
    """Who may reveal what of the masks that keep each upload unreadable alone (`aggregation.secagg`).

    Each upload's one-time mask is Shamir-shared to a committee: the ``committee_size`` roster
    members whose ids hash lowest with the federation id (all of them in a smaller roster), fixed
    by the file, never chosen by the coordinator. A committee member reveals the sum of its shares
    once per round, for one contributor set of at least ``min_cohort + colluders`` signed uploads.
    ``threshold`` reveals unmask a sum. With ``t > (committee + colluders) / 2`` two different sets
    can never both be unmasked in a round, so a coordinator working with up to ``colluders`` members
    learns no upload beyond a sum; ``committee - t`` committee members may drop out.
    """

    committee_size: int = Field(10, ge=1, le=64, description="Members that hold shares of every upload's mask "
                                "(capped at the roster size).")
    colluders: int | None = Field(None, ge=0, description="How many members may work with a deviating "
                                  "coordinator without any upload being read alone (default: fewer than a third "
                                  "of the committee, the bound of Bonawitz et al.'s active-security setting).")

    def committee(self, federation_id: str, members: list[str]) -> list[str]:
        """The committee, in seat order (seat j holds shares at x = j + 1)."""
        ranked = sorted(members, key=lambda m: hashlib.sha256(f"{federation_id}\n{m}".encode()).hexdigest())
        return ranked[: min(self.committee_size, len(members))]

    def tolerated(self, committee: int) -> int:
        """``colluders``, or its default for a committee of this size."""
        return self.colluders if self.colluders is not None else (committee - 1) // 3

    def threshold(self, committee: int) -> int:
        """Reveals needed to unmask: the least ``t`` with ``2t > committee + colluders``."""
        return (committee + self.tolerated(committee)) // 2 + 1


class FederationPolicy(StrictModel):
    """The federation file: roster, model, adapter, rounds, privacy requirements, encryption, release."""

    kind: Literal["federation"] = Field(description="Always `federation` for this kind of file.")
    version: Literal[1] = Field(1, description="Schema version of this file.")
    federation_id: Identifier = Field(description="The federation's id.")
    roster: list[RosterMember] = Field(min_length=1, description="Member institutions.")
    key_holder: Identifier | None = Field(
        None, description="The member that generates the CKKS keys (default: the first in the roster)."
    )
    model: ModelSettings
    adapter: AdapterSettings = Field(default_factory=AdapterSettings)
    rounds: int = Field(ge=1, le=10_000, description="Number of federated rounds.")
    training: LocalTraining = Field(default_factory=LocalTraining)
    server_update: ServerUpdate = Field(default_factory=ServerUpdate)
    min_institutions: int = Field(2, ge=1, description="A round is summed only with at least this many uploads.")
    round_deadline_s: float = Field(600.0, gt=0, description="Seconds after opening that a round stops waiting.")
    privacy: PrivacyRequirements = Field(default_factory=PrivacyRequirements)
    encryption: Literal["ckks"] = Field(
        "ckks", description="How updates are protected in transit and at the coordinator."
    )
    ckks: CkksParameters = Field(
        default_factory=CkksParameters,
        description="CKKS parameters: checked against SEAL's 128-bit security limit and the roster's sums.",
    )
    secure_aggregation: SecureAggregation = Field(
        default_factory=SecureAggregation, description="The committee that unmasks sums: size and colluders.")
    release: ReleaseRules = Field(default_factory=ReleaseRules)
    seed: int = Field(0, ge=0, le=2**63 - 1,
                      description="Seeds the initial adapter: every member starts from identical weights.")

    @model_validator(mode="after")
    def _roster_consistent(self) -> "FederationPolicy":
        seen: dict[str, int] = {}
        for index, member in enumerate(self.roster):
            for field in ("id", "signing_key", "sealing_key"):
                value = getattr(member, field)
                if value in seen:
                    raise FieldProblem(
                        ("roster", index, field),
                        f"duplicate roster entry: same {field} as roster.{seen[value]}",
                    )
                seen[value] = index
        ids = [m.id for m in self.roster]
        if self.key_holder is not None and self.key_holder not in ids:
            raise FieldProblem(("key_holder",), f"{self.key_holder!r} is not in the roster")
        if self.min_institutions > len(self.roster):
            raise FieldProblem(
                ("min_institutions",), f"{self.min_institutions} exceeds the roster size ({len(ids)})"
            )
        return self

    @model_validator(mode="after")
    def _committee_can_unmask(self) -> "FederationPolicy":
        size = min(self.secure_aggregation.committee_size, len(self.roster))
        if self.secure_aggregation.threshold(size) > size:
            raise FieldProblem(("secure_aggregation", "colluders"),
                               f"{self.secure_aggregation.colluders} colluders need more than the committee's "
                               f"{size} members to unmask a sum", f"set colluders to at most {max(size - 1, 0)}")
        return self

    @property
    def committee(self) -> list[str]:
        """The members that hold shares of every upload's mask, in seat order."""
        return self.secure_aggregation.committee(self.federation_id, [m.id for m in self.roster])

    @property
    def unmask_threshold(self) -> int:
        """Committee reveals needed to unmask a round's sum."""
        return self.secure_aggregation.threshold(len(self.committee))

    @property
    def colluders(self) -> int:
        """Members that may work with a deviating coordinator without an upload being read alone."""
        return self.secure_aggregation.tolerated(len(self.committee))

    @model_validator(mode="after")
    def _head_settings_need_a_head(self) -> "FederationPolicy":
        if self.model.task != "sequence_classification":
            for field in ("head_init", "head_init_scale", "head_bias"):
                # Compared with the default, not with the fields set: a dumped and re-read policy sets them all.
                if getattr(self.adapter, field) != AdapterSettings.model_fields[field].default:
                    raise FieldProblem(("adapter", field), f"has no effect: a {self.model.task} model has no "
                                       "classifier head", "remove the line")
        return self

    @model_validator(mode="after")
    def _ckks_carries_the_roster(self) -> "FederationPolicy":
        problem = self.ckks.federation_problem(len(self.roster))
        if problem is not None:
            raise FieldProblem(("ckks", *problem.path), problem.message, problem.hint)
        return self

    @property
    def key_holder_id(self) -> str:
        return self.key_holder or self.roster[0].id

    def member(self, institution_id: str) -> RosterMember | None:
        return next((m for m in self.roster if m.id == institution_id), None)
