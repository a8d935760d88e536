"""A tiny sweep on disk: the tiny-BERT federation kit, one template institution and SWEEP.yaml."""

from __future__ import annotations

from pathlib import Path

from tests.platform.federation_kit import make_federation_files


def write_tiny_sweep(root: Path, epsilons: str = "[2, inf]", ranks: str = "[1, 2]", institutions: int = 2,
                     alone: bool = True, central: bool = True, records: int = 120) -> Path:
    """Write SWEEP.yaml (2 epsilons x 2 ranks by default, 1 round of 2 steps) and its policies; return its path."""
    federation, templates = make_federation_files(root / "base", rounds=1, records=records)
    sweep = root / "sweep.yaml"
    sweep.write_text(
        "kind: sweep\n"
        f"federation: {federation.relative_to(root)}\n"
        f"template: {templates[0].relative_to(root)}\n"
        f"split: {{institutions: {institutions}, alpha: 5.0, test_fraction: 0.25, seed: 1}}\n"
        "grid:\n"
        f"  epsilon: {epsilons}\n"
        f"  lora_rank: {ranks}\n"
        f"baselines: {{alone: {str(alone).lower()}, central: {str(central).lower()}}}\n"
    )
    return sweep
