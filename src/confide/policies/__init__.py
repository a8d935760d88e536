"""Policy files: the federation's participation rules and each institution's own limits."""

from confide.policies.ckks import CkksParameters
from confide.policies.decision import Decision, LedgerState, RoundFacts, RuleResult, decide_participation
from confide.policies.errors import PolicyError, Problem
from confide.policies.federation import (
    AdapterSettings,
    FederationPolicy,
    LocalTraining,
    ModelSettings,
    PrivacyRequirements,
    ReleaseRules,
    RosterMember,
)
from confide.policies.institution import Acceptance, DataSource, InstitutionPolicy, PrivacyBudget
from confide.policies.loading import load_federation, load_institution, load_policy

__all__ = [
    "Acceptance", "AdapterSettings", "CkksParameters", "DataSource", "Decision", "FederationPolicy",
    "InstitutionPolicy", "LedgerState", "LocalTraining", "ModelSettings", "PolicyError", "PrivacyBudget",
    "PrivacyRequirements", "Problem", "ReleaseRules", "RosterMember", "RoundFacts", "RuleResult",
    "decide_participation", "load_federation", "load_institution", "load_policy",
]
