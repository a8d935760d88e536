"""CKKS parameters: SEAL's 128-bit security limits, shape rules, and capacity for a given update."""

from __future__ import annotations

import pytest
import tenseal.sealapi as seal

from confide.aggregation import CapacityExceeded, CkksParameters, InsecureParameters, create_key_material
from confide.aggregation._seal import build_context
from confide.aggregation.params import check_capacity, for_magnitude, max_log_q_128, parameters
from confide.policies.ckks import SUPPORTED_DEGREES


def _seal_accepts(degree: int, bits: list[int]) -> bool:
    """SEAL's own verdict, bypassing confide's validation entirely."""
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(degree)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(degree, bits))
    return seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128).parameters_set()


def test_the_documented_128_bit_limits_are_seals_own():
    # docs/policies.md and DESIGN quote these; SEAL's table is the authority the key holder meets.
    assert {d: max_log_q_128(d) for d in SUPPORTED_DEGREES} == {4096: 109, 8192: 218, 16384: 438, 32768: 881}
    for degree in SUPPORTED_DEGREES:
        assert max_log_q_128(degree) == seal.CoeffModulus.MaxBitCount(degree, seal.SEC_LEVEL_TYPE.TC128)


def test_default_parameters_are_compact_and_within_128_bit_security():
    params = CkksParameters()
    assert params.poly_modulus_degree == 4096
    assert sum(params.coeff_mod_bit_sizes) <= max_log_q_128(4096)
    assert params.upload_bits() / 8 <= 4.0  # bytes per parameter, below a float32
    # 10 members of weight 1 (the policy default) with updates up to 50 in magnitude fit, and
    # their average's error bound stays within 2e-4.
    report = check_capacity(params, 10**6, 50.0, 10)
    assert report.error_bound / 10 < 2e-4
    assert report.headroom_bits > 0


@pytest.mark.parametrize(
    "degree, bits",
    [
        (4096, [60, 50]),  # 110 > 109
        (8192, [60, 60, 60, 40]),  # 220 > 218
        (16384, [60] * 7 + [20]),  # 440 > 438
        (32768, [60] * 14 + [42]),  # 882 > 881
    ],
)
def test_modulus_above_the_128_bit_limit_is_refused_as_seal_refuses_it(degree, bits):
    with pytest.raises(InsecureParameters) as err:
        parameters(poly_modulus_degree=degree, coeff_mod_bit_sizes=bits)
    assert "128-bit security limit" in str(err.value)
    assert err.value.hint
    assert not _seal_accepts(degree, bits)


@pytest.mark.parametrize(
    "degree, bits",
    [(4096, [60, 49]), (8192, [60, 60, 60, 38]), (16384, [60] * 6 + [39, 39]), (32768, [60] * 14 + [41])],
)
def test_modulus_at_the_128_bit_limit_is_accepted(degree, bits):
    params = parameters(poly_modulus_degree=degree, coeff_mod_bit_sizes=bits)
    assert sum(params.coeff_mod_bit_sizes) == max_log_q_128(degree)
    assert build_context(params).parameters_set()


def test_parameters_at_the_limit_make_working_keys():
    material = create_key_material(parameters(poly_modulus_degree=4096, coeff_mod_bit_sizes=[60, 49]))
    assert material.params.slots == 2048


@pytest.mark.parametrize("degree", [2048, 6000, 65536])
def test_ring_degree_outside_supported_powers_of_two_is_refused(degree):
    with pytest.raises(InsecureParameters, match="4096..32768"):
        parameters(poly_modulus_degree=degree)


@pytest.mark.parametrize("bits", [[61], [10], []])
def test_prime_sizes_outside_seal_range_are_refused(bits):
    with pytest.raises(InsecureParameters):
        parameters(coeff_mod_bit_sizes=bits)


@pytest.mark.parametrize("scale_bits", [10, 58])
def test_scale_without_precision_or_headroom_is_refused(scale_bits):
    with pytest.raises(InsecureParameters, match="scale_bits"):
        parameters(scale_bits=scale_bits)


def test_sum_that_would_wrap_around_the_modulus_is_refused_with_a_smaller_scale():
    params = parameters(scale_bits=50)  # leaves 2**8 = 256 for the sum
    with pytest.raises(CapacityExceeded) as err:
        check_capacity(params, 1000, 100.0, 10)
    assert "scale_bits <= 48" in err.value.hint


def test_required_precision_beyond_the_scale_is_refused():
    with pytest.raises(CapacityExceeded, match="expected error"):
        check_capacity(parameters(scale_bits=20), 1000, 1.0, 10, max_error=1e-9)


def test_for_magnitude_picks_the_largest_scale_that_still_fits():
    params = for_magnitude(1000.0)
    check_capacity(params, 10, 100.0, 10)
    assert params.scale_bits == 48
    with pytest.raises(CapacityExceeded):
        check_capacity(params, 10, 100.0, 21)


def test_errors_print_as_one_line_with_a_hint():
    with pytest.raises(InsecureParameters) as err:
        parameters(poly_modulus_degree=4096, coeff_mod_bit_sizes=[60, 60])
    assert "\n" not in str(err.value) and "hint:" in str(err.value)


def test_aggregation_errors_are_bad_input_for_the_cli():
    from confide.errors import BadInput

    with pytest.raises(BadInput) as err:
        parameters(poly_modulus_degree=1024)
    assert len(err.value.lines()) == 1
