"""The Modbus register codec: values <-> 16-bit register words for every data type and word order."""

from __future__ import annotations

import math
import re

import pytest

from protocols.modbus.codec import RegisterSpec, decode_value, encode_value

ROUND_TRIP = [
    ("uint16", 10.0, [0.0, 7.4, 6553.5]),
    ("int16", 10.0, [-3276.8, -1.5, 0.0, 3276.7]),
    ("uint32", 1000.0, [0.0, 1.234, 4294967.295]),
    ("int32", 1.0, [-2147483648.0, -1.0, 0.0, 2147483647.0]),
    ("float32", 1.0, [-1.5e30, -0.25, 0.0, 3.5, 1e30]),
]


@pytest.mark.parametrize("word_order", ["big", "little"])
@pytest.mark.parametrize("data_type, scale, values", ROUND_TRIP)
def test_decode_inverts_encode_for_every_data_type_and_word_order(data_type, scale, values, word_order):
    spec = RegisterSpec(40001, data_type, scale, word_order)
    for value in values:
        words = encode_value(spec, value)
        assert len(words) == spec.word_count and all(0 <= w <= 0xFFFF for w in words)
        decoded = decode_value(spec, words)
        if data_type == "float32":
            assert math.isclose(decoded, value, rel_tol=1e-7)
        else:
            assert decoded == round(value * scale) / scale


@pytest.mark.parametrize("data_type, value, big_words", [
    ("uint16", 258, [0x0102]),
    ("int16", -2, [0xFFFE]),
    ("uint32", 0x01020304, [0x0102, 0x0304]),
    ("int32", -2, [0xFFFF, 0xFFFE]),
    ("float32", 1.0, [0x3F80, 0x0000]),
])
def test_words_are_big_endian_and_little_word_order_swaps_the_two_words(data_type, value, big_words):
    assert encode_value(RegisterSpec(1, data_type), value) == big_words
    assert encode_value(RegisterSpec(1, data_type, word_order="little"), value) == big_words[::-1]


def test_integer_encoding_rounds_value_times_scale():
    assert encode_value(RegisterSpec(1, "uint16", 10), 7.46) == [75]
    assert encode_value(RegisterSpec(1, "int16", 10), -0.04) == [0]
    assert encode_value(RegisterSpec(1, "uint16", 1), -0.1) == [0]  # rounds to 0: in range


@pytest.mark.parametrize("data_type, value", [
    ("uint16", -1), ("uint16", 65536), ("int16", 32768), ("int16", -32769), ("uint32", -1),
    ("uint32", 2**32), ("int32", 2**31), ("int32", -(2**31) - 1), ("float32", 1e39),
])
def test_values_out_of_range_for_the_data_type_are_rejected_naming_register_and_value(data_type, value):
    with pytest.raises(ValueError, match=rf"register 40010: value {re.escape(repr(value))} .*out of range for {data_type}"):
        encode_value(RegisterSpec(40010, data_type), value)


@pytest.mark.parametrize("value", [math.nan, math.inf, True, "7"])
def test_non_finite_or_non_numeric_values_cannot_be_encoded(value):
    with pytest.raises(ValueError, match=r"register 40010: value .* is not a finite number"):
        encode_value(RegisterSpec(40010), value)


def test_decoding_needs_the_right_number_of_16_bit_words():
    with pytest.raises(ValueError, match=r"register 5: int32 needs 2 word\(s\), got 1"):
        decode_value(RegisterSpec(5, "int32"), [1])
    with pytest.raises(ValueError, match="register 5: word 65536 is not an integer in 0..65535"):
        decode_value(RegisterSpec(5), [65536])


@pytest.mark.parametrize("kwargs, message", [
    ({"register": 0}, r"register: must be an integer in 1..65536"),
    ({"register": 65536, "data_type": "uint32"}, r"register: must be an integer in 1..65535 for uint32"),
    ({"register": 1, "data_type": "uint64"}, "data_type: must be one of"),
    ({"register": 1, "word_order": "middle"}, "word_order: must be one of"),
    ({"register": 1, "scale": 0}, r"scale: must be a finite number > 0, got 0 \(register 1\)"),
])
def test_invalid_register_specs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RegisterSpec(**kwargs)
