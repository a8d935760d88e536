"""Turning `confide simulate` arguments into a `Simulation`: policy files, or a split of one dataset."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from confide.platform.simulation import Simulation, SimulationError
from confide.platform.split import check_split_settings, parse_split, split_to_files
from confide.policies import FederationPolicy, InstitutionPolicy, load_federation, load_institution, load_policy
from confide.policies.errors import PolicyError, Problem
from confide.policies.yaml_source import YamlDocument, read_yaml

if TYPE_CHECKING:
    from confide.platform.sweep.spec import LoadedSweep


def simulation_from_files(
    federation_path: Path,
    institution_paths: list[Path],
    out_dir: Path,
    workers: int,
    split: str | None = None,
    n_institutions: int = 3,
    template: Path | None = None,
    test: Path | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Simulation:
    """Load the policies (and, with `split`, write the generated institutions' data under OUT/data).

    Raises PolicyError for invalid files, SplitError for a bad split, SimulationError for arguments
    that do not go together.
    """
    from confide.platform.data import read_records

    if workers < 0:
        raise SimulationError(f"--workers must be >= 0, got {workers}", "0 runs every institution in this process")
    federation = load_federation(federation_path)
    if split is None:
        if template is not None:
            raise SimulationError("--template goes with --split", "add --split dirichlet:ALPHA or drop --template")
        if not institution_paths:
            raise SimulationError("no institution policy files given", "pass INSTITUTION files or use --split")
        institutions = [load_institution(p) for p in institution_paths]
        first = institutions[0].data
        test_records = read_records(test, first.format, first.text_field, first.label_field) if test else None
        return Simulation(federation, institutions, out_dir, test_records, workers)
    if institution_paths:
        raise SimulationError("give either institution files or --split, not both")
    alpha = parse_split(split)
    check_split_settings(alpha, test_fraction, seed)
    if template is None:
        raise SimulationError("--split needs --template INSTITUTION", "its data file is the dataset that is split")
    base = load_institution(template)
    source = base.data
    records = read_records(source.path, source.format, source.text_field, source.label_field)
    names = [f"site-{k + 1}" for k in range(n_institutions)]
    data_dir = out_dir / "data"
    parts = split_to_files([{"text": r["text"], "label": r["label"]} for r in records], data_dir, names, alpha,
                           test_fraction, seed)
    institutions = [
        base.model_copy(update={
            "institution_id": name,
            "data": source.model_copy(update={"path": data_dir / f"{name}.jsonl", "format": "jsonl",
                                              "text_field": "text", "label_field": "label"}),
        })
        for name in names
    ]
    return Simulation(federation, institutions, out_dir, parts["test"], workers, generated=True)


def load_checked(path: Path) -> "FederationPolicy | InstitutionPolicy | LoadedSweep":
    """Any file `confide policy check` validates: a federation or institution policy, or a sweep file.

    Raises PolicyError listing every problem with its file and line.
    """
    from confide.platform.sweep.spec import load_sweep

    doc = read_yaml(path)
    if isinstance(doc.data, dict) and doc.data.get("kind") == "sweep":
        return load_sweep(path)
    policy = load_policy(path)
    if isinstance(policy, FederationPolicy):
        _check_layers_exist(policy, doc)
    return policy


def _check_layers_exist(federation: FederationPolicy, doc: YamlDocument) -> None:
    """Refuse `adapter.layers` beyond the model's depth, as building the model would, but without its weights.

    Only the model's config is read; where it is not on this machine the check is left to the build.
    """
    from confide.platform.models import model_depth

    layers = federation.adapter.layers
    if not layers:
        return
    depth = model_depth(federation.model.source)
    beyond = [k for k in layers if depth is not None and k >= depth]
    if beyond:
        raise PolicyError([Problem(doc.file, doc.line_of(("adapter", "layers")), "adapter.layers",
                                   f"layer {beyond[0]} does not exist: {federation.model.source} has {depth} "
                                   f"layers", f"layers count from 0, so use 0 to {depth - 1}")])
