"""The Modbus register codec: where a value lives and how it is encoded in 16-bit registers.

A :class:`RegisterSpec` says which holding register a value is written to (one-based, as vendor
documentation numbers them: "40001" is PDU address 40000), its data type, scale and word order.
:func:`encode_value` / :func:`decode_value` convert between engineering values and register words;
they are pure functions shared by the Modbus link, the register maps, the battery simulator and the
seed-compatible :class:`~runtime.engine.adapters.ModbusAdapter`. :data:`DEFAULT_REGISTER_MAP` is the
seed's map (40001 charge, 40002 discharge, 40003 power limit, 40004 SoC target).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args

from runtime.core.commands import CommandType
from runtime.core.errors import ConfigurationError, RegisterMapError

__all__ = ["RegisterSpec", "DataType", "WordOrder", "encode_value", "decode_value", "DEFAULT_REGISTER_MAP"]


def _check_choice(name: str, value: object, choices: Any) -> None:
    if value not in get_args(choices):
        raise ConfigurationError(f"{name}: must be one of {get_args(choices)}, got {value!r}")


DataType = Literal["uint16", "int16", "uint32", "int32", "float32"]
WordOrder = Literal["big", "little"]
_FORMATS: dict[str, tuple[str, int]] = {"uint16": (">H", 1), "int16": (">h", 1), "uint32": (">I", 2),
                                        "int32": (">i", 2), "float32": (">f", 2)}
_INT_RANGES: dict[str, tuple[int, int]] = {"uint16": (0, 0xFFFF), "int16": (-0x8000, 0x7FFF),
                                           "uint32": (0, 0xFFFFFFFF), "int32": (-0x80000000, 0x7FFFFFFF)}
_FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """Where and how one value is written.

    ``register`` is the one-based holding register number of vendor documentation ("40001"); the
    zero-based PDU ``address`` sent on the wire is ``register - 1`` (40001 -> 40000). ``raw =
    round(value * scale)`` (Python ``round``: halves to even) for the integer types, ``value * scale``
    for float32; 32-bit types use two registers, high word first for ``word_order="big"`` and low word
    first for ``"little"`` (bytes within a word are always big-endian, as Modbus defines).
    """

    register: int
    data_type: DataType = "uint16"
    scale: float = 1.0
    word_order: WordOrder = "big"

    def __post_init__(self) -> None:
        _check_choice("data_type", self.data_type, DataType)
        _check_choice("word_order", self.word_order, WordOrder)
        last = 0x10000 - self.word_count + 1
        if isinstance(self.register, bool) or not isinstance(self.register, int) or not 1 <= self.register <= last:
            raise ConfigurationError(f"register: must be an integer in 1..{last} for {self.data_type}, "
                             f"got {self.register!r}")
        if (isinstance(self.scale, bool) or not isinstance(self.scale, (int, float))
                or not math.isfinite(self.scale) or self.scale <= 0):
            raise ConfigurationError(f"scale: must be a finite number > 0, got {self.scale!r} (register {self.register})")

    @property
    def address(self) -> int:
        """Zero-based PDU address of the first register."""
        return self.register - 1

    @property
    def word_count(self) -> int:
        """Number of 16-bit registers the value occupies (1 or 2)."""
        return _FORMATS[self.data_type][1]


def encode_value(spec: RegisterSpec, value: float) -> list[int]:
    """``value`` (engineering units) -> register words for ``spec``.

    :raises ValueError: ``value`` is not a finite number, or ``value * scale`` is out of range for the
        data type (the message names the register and the value).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RegisterMapError(f"register {spec.register}: value {value!r} is not a finite number")
    fmt, _ = _FORMATS[spec.data_type]
    if spec.data_type == "float32":
        raw: float = value * spec.scale
        if abs(raw) > _FLOAT32_MAX:
            raise RegisterMapError(f"register {spec.register}: value {value!r} (x{spec.scale} = {raw!r}) is out of "
                             f"range for float32")
    else:
        raw = round(value * spec.scale)
        lo, hi = _INT_RANGES[spec.data_type]
        if not lo <= raw <= hi:
            raise RegisterMapError(f"register {spec.register}: value {value!r} (x{spec.scale} = raw {raw}) is out of "
                             f"range for {spec.data_type} ({lo}..{hi})")
    data = struct.pack(fmt, raw)
    words = [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
    return words[::-1] if spec.word_order == "little" else words


def decode_value(spec: RegisterSpec, words: Sequence[int]) -> float:
    """Register words -> value (engineering units) for ``spec``; the inverse of :func:`encode_value`.

    :raises ValueError: wrong number of words for the data type, or a word outside 0..65535.
    """
    if len(words) != spec.word_count:
        raise RegisterMapError(f"register {spec.register}: {spec.data_type} needs {spec.word_count} word(s), "
                         f"got {len(words)}: {list(words)!r}")
    for w in words:
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= 0xFFFF:
            raise RegisterMapError(f"register {spec.register}: word {w!r} is not an integer in 0..65535")
    ordered = list(words)[::-1] if spec.word_order == "little" else list(words)
    data = b"".join(w.to_bytes(2, "big") for w in ordered)
    (raw,) = struct.unpack(_FORMATS[spec.data_type][0], data)
    return raw / spec.scale


#: kW rates and limits as uint16 at 0.1 kW (scale 10, 0..6553.5 kW); SOC target as uint16 at 0.1 %.
DEFAULT_REGISTER_MAP: Mapping[CommandType, RegisterSpec] = MappingProxyType({
    CommandType.SET_CHARGE_RATE: RegisterSpec(40001, "uint16", 10.0),
    CommandType.SET_DISCHARGE_RATE: RegisterSpec(40002, "uint16", 10.0),
    CommandType.SET_POWER_LIMIT: RegisterSpec(40003, "uint16", 10.0),
    CommandType.SET_SOC_TARGET: RegisterSpec(40004, "uint16", 10.0),
})
