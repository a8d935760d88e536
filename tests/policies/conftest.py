from pathlib import Path

import pytest

from confide.identity import Identity

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def roster_yaml(ids: list[str]) -> str:
    lines = []
    for i in ids:
        entry = Identity.generate(i).public.to_roster_entry(i)
        lines += [f"  - id: {i}", f"    signing_key: {entry['signing_key']}",
                  f"    sealing_key: {entry['sealing_key']}"]
    return "\n".join(lines)


@pytest.fixture
def federation_text() -> str:
    """A small valid federation file; the roster occupies lines 4-12."""
    return (
        "kind: federation\n"                      # 1
        "federation_id: fed-1\n"                  # 2
        "roster:\n"                               # 3
        + roster_yaml(["a", "b", "c"]) + "\n"     # 4-12
        "model:\n"                                # 13
        "  source: random:tiny-bert\n"            # 14
        "  labels: [x, y]\n"                      # 15
        "adapter:\n"                              # 16
        "  rank: 4\n"                             # 17
        "rounds: 3\n"                             # 18
        "min_institutions: 2\n"                   # 19
        "privacy:\n"                              # 20
        "  delta: 1.0e-5\n"                       # 21
    )


@pytest.fixture
def institution_text() -> str:
    return (
        "kind: institution\n"          # 1
        "institution_id: a\n"          # 2
        "data:\n"                      # 3
        "  path: data/a.jsonl\n"       # 4
        "  format: jsonl\n"            # 5
        "budget:\n"                    # 6
        "  epsilon: 3.0\n"             # 7
        "  delta: 1.0e-5\n"            # 8
        "round_epsilon_cap: 1.0\n"     # 9
        "min_cohort: 2\n"              # 10
        "state_dir: state/a\n"         # 11
    )


@pytest.fixture
def write(tmp_path):
    def _write(text: str, name: str = "policy.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write
