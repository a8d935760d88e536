import pytest

from confide.policies import (
    FederationPolicy,
    InstitutionPolicy,
    PolicyError,
    load_federation,
    load_institution,
    load_policy,
)
from tests.policies.conftest import EXAMPLES


def problems_of(path):
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return info.value.problems


def test_example_policies_load():
    federation = load_federation(EXAMPLES / "federation.yaml")
    assert [m.id for m in federation.roster] == ["hospital-a", "hospital-b", "hospital-c"]
    for name in ("hospital-a", "hospital-b", "hospital-c"):
        institution = load_institution(EXAMPLES / f"{name}.yaml")
        assert institution.institution_id == name
        assert federation.member(name) is not None


def test_valid_files_give_models_with_defaults(write, federation_text, institution_text):
    federation = load_policy(write(federation_text, "f.yaml"))
    assert isinstance(federation, FederationPolicy)
    assert federation.adapter.freeze_a is True
    assert federation.key_holder_id == "a"
    institution = load_policy(write(institution_text, "i.yaml"))
    assert isinstance(institution, InstitutionPolicy)
    assert institution.require_encryption is True and institution.allow_release is False


def test_relative_paths_resolve_against_the_policy_file(write, institution_text, tmp_path):
    institution = load_institution(write(institution_text, "i.yaml"))
    assert institution.data.path == tmp_path / "data" / "a.jsonl"
    assert institution.identity_path == tmp_path / "state" / "a" / "identity"


def test_yaml_syntax_error_names_the_line(write, institution_text):
    text = institution_text.replace("  format: jsonl\n", "  format: [jsonl\n")
    (problem,) = problems_of(write(text))
    assert problem.line in (5, 6)
    assert "YAML syntax error" in problem.message


def test_wrong_type_names_field_and_line(write, federation_text):
    (problem,) = problems_of(write(federation_text.replace("rounds: 3", "rounds: three")))
    assert (problem.line, problem.field) == (18, "rounds")
    assert "integer" in problem.message


@pytest.mark.parametrize(
    ("old", "new", "line", "field"),
    [
        ("  epsilon: 3.0", "  epsilon: 0", 7, "budget.epsilon"),
        ("  epsilon: 3.0", "  epsilon: -2", 7, "budget.epsilon"),
        ("  delta: 1.0e-5", "  delta: 1.5", 8, "budget.delta"),
        ("min_cohort: 2", "min_cohort: 0", 10, "min_cohort"),
    ],
)
def test_out_of_range_institution_values(write, institution_text, old, new, line, field):
    (problem,) = problems_of(write(institution_text.replace(old, new)))
    assert (problem.line, problem.field) == (line, field)


@pytest.mark.parametrize(
    ("old", "new", "line", "field"),
    [
        ("  rank: 4", "  rank: 0", 17, "adapter.rank"),
        ("  delta: 1.0e-5", "  delta: 1.0", 21, "privacy.delta"),
        ("rounds: 3", "rounds: 0", 18, "rounds"),
    ],
)
def test_out_of_range_federation_values(write, federation_text, old, new, line, field):
    (problem,) = problems_of(write(federation_text.replace(old, new)))
    assert (problem.line, problem.field) == (line, field)


def test_unknown_key_is_rejected_with_a_suggestion(write, institution_text):
    (problem,) = problems_of(write(institution_text.replace("min_cohort: 2", "min_cohrt: 2")))
    assert (problem.line, problem.field, problem.message) == (10, "min_cohrt", "unknown key")
    assert "min_cohort" in problem.hint


def test_unknown_nested_key_is_rejected(write, federation_text):
    (problem,) = problems_of(write(federation_text.replace("  rank: 4", "  rank: 4\n  ranks: 8")))
    assert (problem.line, problem.field) == (18, "adapter.ranks")


def test_duplicate_roster_entry_points_at_the_second_entry(write, federation_text):
    text = federation_text.replace("  - id: b\n", "  - id: a\n")
    (problem,) = problems_of(write(text))
    assert (problem.line, problem.field) == (7, "roster.1.id")
    assert "duplicate" in problem.message


def test_duplicate_yaml_key_is_rejected(write, institution_text):
    (problem,) = problems_of(write(institution_text + "min_cohort: 3\n"))
    assert (problem.line, problem.field) == (12, "min_cohort")
    assert "line 10" in problem.message


def test_missing_required_field_names_its_parent_line(write, institution_text):
    (problem,) = problems_of(write(institution_text.replace("  epsilon: 3.0\n", "")))
    assert (problem.line, problem.field, problem.message) == (6, "budget.epsilon", "required field is missing")
    assert problem.hint.startswith("add `epsilon`")


def test_every_problem_is_reported_at_once(write, institution_text):
    text = institution_text.replace("  epsilon: 3.0", "  epsilon: 0").replace("min_cohort: 2", "min_cohort: x")
    problems = problems_of(write(text + "colour: blue\n"))
    assert [(p.line, p.field) for p in problems] == [(7, "budget.epsilon"), (10, "min_cohort"), (12, "colour")]


def test_malformed_public_key_is_rejected(write, federation_text):
    import re

    text = re.sub(r"(  - id: a\n    signing_key: )\S+", r"\1bm90LWEta2V5", federation_text)
    (problem,) = problems_of(write(text))
    assert (problem.line, problem.field) == (5, "roster.0.signing_key")
    assert "32-byte" in problem.message


def test_safe_load_refuses_python_tags(write, institution_text):
    (problem,) = problems_of(write(institution_text + "x: !!python/object/apply:os.system ['true']\n"))
    assert problem.line == 12
    assert "YAML" in problem.message


def test_missing_or_unknown_kind(write, institution_text):
    (problem,) = problems_of(write(institution_text.replace("kind: institution", "kind: hospital")))
    assert (problem.line, problem.field) == (1, "kind")
    (problem,) = problems_of(write(institution_text.replace("kind: institution\n", "")))
    assert problem.field == "kind"


def test_round_cap_above_budget_is_rejected(write, institution_text):
    (problem,) = problems_of(write(institution_text.replace("round_epsilon_cap: 1.0", "round_epsilon_cap: 4.0")))
    assert (problem.line, problem.field) == (9, "round_epsilon_cap")


def test_min_institutions_above_roster_size(write, federation_text):
    (problem,) = problems_of(write(federation_text.replace("min_institutions: 2", "min_institutions: 4")))
    assert (problem.line, problem.field) == (19, "min_institutions")


def test_loading_the_wrong_kind_is_an_error(write, institution_text):
    with pytest.raises(PolicyError) as info:
        load_federation(write(institution_text))
    assert "expected a federation policy" in str(info.value)


def test_missing_file_is_an_error(tmp_path):
    (problem,) = problems_of(tmp_path / "nope.yaml")
    assert problem.message == "file not found"


@pytest.mark.parametrize(
    ("ckks", "line", "field", "words"),
    [
        # 120 bits of modulus at N=4096: SEAL's 128-bit limit is 109.
        ("{poly_modulus_degree: 4096, coeff_mod_bit_sizes: [60, 60], scale_bits: 59}", 22,
         "ckks.coeff_mod_bit_sizes", "128-bit security limit of 109"),
        ("{coeff_mod_bit_sizes: [60], scale_bits: 58}", 22, "ckks.scale_bits", "does not fit the first prime"),
        ("{poly_modulus_degree: 5000}", 22, "ckks.poly_modulus_degree", "not supported"),
        ("{coeff_mod_bit_sizes: [60, 70]}", 22, "ckks.coeff_mod_bit_sizes.1", "outside 20..60"),
        # Secure, but 2**(60-57-2) = 2 cannot hold the count slot of three members.
        ("{scale_bits: 57}", 22, "ckks.scale_bits", "less than the count of 3 members"),
        # Secure, but the error of a 3-member sum at N=32768 and scale 2**20 hides the count slot.
        ("{poly_modulus_degree: 32768, scale_bits: 20}", 22, "ckks.scale_bits", "too coarse"),
    ],
)
def test_unusable_ckks_parameters_are_refused_at_their_line(write, federation_text, ckks, line, field, words):
    (problem,) = problems_of(write(federation_text + f"ckks: {ckks}\n"))
    assert (problem.line, problem.field) == (line, field)
    assert words in problem.message
    assert problem.hint


def test_ckks_block_in_block_style_points_at_the_offending_key(write, federation_text):
    text = federation_text + "ckks:\n  poly_modulus_degree: 4096\n  coeff_mod_bit_sizes: [60, 60]\n  scale_bits: 40\n"
    (problem,) = problems_of(write(text))
    assert (problem.line, problem.field) == (24, "ckks.coeff_mod_bit_sizes")
    assert "poly_modulus_degree 8192" in problem.hint


def test_federation_ckks_is_the_model_encryption_uses(write, federation_text):
    from confide.aggregation.params import CkksParameters

    policy = load_federation(write(federation_text + "ckks: {coeff_mod_bit_sizes: [60, 40]}\n"))
    assert isinstance(policy.ckks, CkksParameters)
    assert policy.ckks.coeff_mod_bit_sizes == (60, 40)
