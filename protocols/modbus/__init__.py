"""Modbus TCP batteries: the register codec, register maps as data, and the device link that drives them.

* :mod:`protocols.modbus.codec`: :class:`RegisterSpec`, value <-> register words, the seed's default map.
* :mod:`protocols.modbus.register_map`: the default seed map, custom maps from config, and the SunSpec
  profile (models 124 and 704, point offsets from pysunspec2's model definitions).
* :mod:`protocols.modbus.link`: :class:`ModbusBatteryLink`, one pymodbus client per battery.
"""

from runtime.core.errors import RegisterMapError

from .codec import DEFAULT_REGISTER_MAP, RegisterSpec, decode_value, encode_value
from .link import ModbusBatteryLink, exception_name
from .register_map import (BatteryRegisterMap, PointWrite, RegisterMap, StatusPoint, SunSpecMap, WriteBlock,
                           load_register_map, sunspec_map)

__all__ = [
    "ModbusBatteryLink", "exception_name", "BatteryRegisterMap", "RegisterMap", "SunSpecMap", "StatusPoint",
    "RegisterMapError", "PointWrite", "WriteBlock", "load_register_map", "sunspec_map", "RegisterSpec",
    "DEFAULT_REGISTER_MAP", "encode_value", "decode_value",
]
