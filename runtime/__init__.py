"""Site coordination runtime: turns energy schedules and operator commands into device commands.

The public API is re-exported here (``from runtime import Site, DispatchEngine, ...``). Names are
resolved lazily (PEP 562) so that ``actors`` and ``protocols`` can import ``runtime.<module>``
without pulling in the whole runtime, and so that there are no import cycles.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "AdapterRegistry": "adapters", "ModbusAdapter": "adapters", "OCPPAdapter": "adapters",
    "ProtocolAdapter": "adapters", "RegisterSpec": "adapters", "UnsupportedCommand": "adapters",
    "AssetSpec": "assets", "BatterySpec": "assets", "ChargerSpec": "assets",
    "CommandBatch": "batch",
    "Clock": "clock", "RealClock": "clock", "VirtualClock": "clock",
    "Change": "command_table", "CommandTable": "command_table",
    "FINAL_STATUSES": "commands", "Command": "commands", "CommandStatus": "commands", "CommandType": "commands",
    "InvalidCommandTransition": "commands", "new_command_id": "commands",
    "DispatchEngine": "dispatch",
    "Event": "events", "EventBus": "events", "EventType": "events",
    "Journal": "journal", "JournalCorrupt": "journal",
    "RetryPolicy": "retry",
    "ScheduleError": "schedule", "schedule_to_commands": "schedule",
    "Site": "site", "SiteEvents": "site", "SiteNotRunning": "site", "UnknownAsset": "site",
    "RestartPolicy": "site",
    "BatteryState": "statemachine", "EVChargerState": "statemachine", "InvalidTransition": "statemachine",
    "StateMachine": "statemachine", "Transition": "statemachine", "battery_machine": "statemachine",
    "ev_charger_machine": "statemachine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"runtime.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .adapters import (AdapterRegistry, ModbusAdapter, OCPPAdapter, ProtocolAdapter, RegisterSpec,
                           UnsupportedCommand)
    from .assets import AssetSpec, BatterySpec, ChargerSpec
    from .batch import CommandBatch
    from .clock import Clock, RealClock, VirtualClock
    from .command_table import Change, CommandTable
    from .commands import (FINAL_STATUSES, Command, CommandStatus, CommandType, InvalidCommandTransition,
                           new_command_id)
    from .dispatch import DispatchEngine
    from .events import Event, EventBus, EventType
    from .journal import Journal, JournalCorrupt
    from .retry import RetryPolicy
    from .schedule import ScheduleError, schedule_to_commands
    from .site import RestartPolicy, Site, SiteEvents, SiteNotRunning, UnknownAsset
    from .statemachine import (BatteryState, EVChargerState, InvalidTransition, StateMachine, Transition,
                               battery_machine, ev_charger_machine)
