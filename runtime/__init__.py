"""Site coordination runtime: turns energy schedules and operator commands into device commands.

The public API is re-exported here: ``from runtime import Site, ChargerSpec, VirtualClock, ...``.
Names are resolved lazily (PEP 562), so that ``protocols`` and ``actors`` can import the ground floor
(``runtime.core``) without pulling in the site, and so that there are no import cycles.

Where things live (lowest floor first; each imports only from the floors below it):

* ``runtime.core``: commands and their lifecycle, the command table, schedules and batches, clocks,
  the journal and recovery, state machines, events, retry policy, asset specs, errors, the I/O thread;
* ``protocols``: the device boundary, OCPP, Modbus, the edge wire format, simulators;
* ``actors``: dispatcher, asset, supervisor and event actors; ``runtime.engine``: the seed-compatible
  synchronous engine;
* ``runtime.site``: :class:`Site`, which composes them;
* above it: the ``coordinator`` command (``runtime.cli``), benchmarks (``runtime.bench``), the demo,
  the scenario runner, the site process (``runtime.service``) and the cloud router (``runtime.router``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # the site
    "Site": "runtime.site", "SiteEvents": "runtime.site", "RestartPolicy": "actors.supervisor",
    # assets, clocks, commands, schedules
    "AssetSpec": "runtime.core.assets", "BatterySpec": "runtime.core.assets", "ChargerSpec": "runtime.core.assets",
    "AssetStatus": "runtime.core.assets",
    "Clock": "runtime.core.clock", "RealClock": "runtime.core.clock", "VirtualClock": "runtime.core.clock",
    "FINAL_STATUSES": "runtime.core.commands", "Command": "runtime.core.commands",
    "CommandStatus": "runtime.core.commands", "CommandType": "runtime.core.commands",
    "new_command_id": "runtime.core.commands",
    "CommandBatch": "runtime.core.batch", "schedule_to_commands": "runtime.core.schedule",
    "Change": "runtime.core.command_table", "CommandTable": "runtime.core.command_table",
    "RetryPolicy": "runtime.core.retry", "Journal": "runtime.core.journal", "GridLimit": "runtime.core.grid",
    "Event": "runtime.core.events", "EventBus": "runtime.core.events", "EventType": "runtime.core.events",
    "BatteryState": "runtime.core.statemachine", "EVChargerState": "runtime.core.statemachine",
    "StateMachine": "runtime.core.statemachine", "Transition": "runtime.core.statemachine",
    "battery_machine": "runtime.core.statemachine", "ev_charger_machine": "runtime.core.statemachine",
    # the seed-compatible synchronous engine
    "DispatchEngine": "runtime.engine.dispatch", "AdapterRegistry": "runtime.engine.adapters",
    "ModbusAdapter": "runtime.engine.adapters", "OCPPAdapter": "runtime.engine.adapters",
    "ProtocolAdapter": "runtime.engine.adapters", "RegisterSpec": "protocols.modbus.codec",
    # every error a user can catch (runtime.core.errors)
    **{name: "runtime.core.errors" for name in (
        "CoordinatorError", "ConfigurationError", "ConfigFileError", "CommandError", "InvalidCommand",
        "InvalidCommandTransition", "UnsupportedCommand", "ScheduleError", "InvalidTransition",
        "JournalError", "JournalCorrupt", "JournalUnsupported", "SiteError", "SiteNotRunning", "SiteFailed", "UnknownAsset",
        "ScenarioError", "DeviceError", "ChargerNotConnected", "RegisterMapError", "SimNotConnected")},
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from actors.supervisor import RestartPolicy  # noqa: F401
    from protocols.modbus.codec import RegisterSpec  # noqa: F401

    from .core.assets import AssetSpec, AssetStatus, BatterySpec, ChargerSpec  # noqa: F401
    from .core.batch import CommandBatch  # noqa: F401
    from .core.clock import Clock, RealClock, VirtualClock  # noqa: F401
    from .core.command_table import Change, CommandTable  # noqa: F401
    from .core.commands import FINAL_STATUSES, Command, CommandStatus, CommandType, new_command_id  # noqa: F401
    from .core.errors import (ChargerNotConnected, CommandError, ConfigFileError, ConfigurationError,  # noqa: F401
                              CoordinatorError, DeviceError, InvalidCommand, InvalidCommandTransition,
                              InvalidTransition, JournalCorrupt, JournalError, JournalUnsupported,
                              RegisterMapError, ScenarioError, ScheduleError, SimNotConnected, SiteError,
                              SiteFailed, SiteNotRunning, UnknownAsset, UnsupportedCommand)
    from .core.events import Event, EventBus, EventType  # noqa: F401
    from .core.grid import GridLimit  # noqa: F401
    from .core.journal import Journal  # noqa: F401
    from .core.retry import RetryPolicy  # noqa: F401
    from .core.schedule import schedule_to_commands  # noqa: F401
    from .core.statemachine import (BatteryState, EVChargerState, StateMachine, Transition,  # noqa: F401
                                    battery_machine, ev_charger_machine)
    from .engine.adapters import AdapterRegistry, ModbusAdapter, OCPPAdapter, ProtocolAdapter  # noqa: F401
    from .engine.dispatch import DispatchEngine  # noqa: F401
    from .site import Site, SiteEvents  # noqa: F401
