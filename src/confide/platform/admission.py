"""Join-time admission: may this institution take part in this federation at all?"""

from __future__ import annotations

from pathlib import Path

from confide.policies import Decision, decide_participation, load_federation, load_institution


def explain_admission(federation_path: Path, institution_path: Path) -> Decision:
    """Load both policies and evaluate every participation rule that can be judged before round 1.

    Raises PolicyError (bad input) if either file is invalid.
    """
    federation = load_federation(federation_path)
    institution = load_institution(institution_path)
    return decide_participation(federation, institution)
