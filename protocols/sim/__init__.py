"""Device simulators for tests, scenarios, benchmarks and the ``coordinator sim`` command.

* :class:`ChargePointSim` (:mod:`protocols.sim.chargepoint`): one OCPP 1.6 / 2.0.1 charge point, client side;
* fleets of them (:mod:`protocols.sim.fleet`): :func:`start_fleet`, :func:`run_fleet`, :func:`fleet_ids`;
* :class:`BatterySim` (:mod:`protocols.sim.battery`): a Modbus TCP battery behind a real pymodbus server.
"""

from .battery import BatterySim
from .chargepoint import ChargePointSim, ReceivedCall
from .fleet import Fleet, fleet_ids, run_fleet, start_fleet

__all__ = ["BatterySim", "ChargePointSim", "ReceivedCall", "Fleet", "fleet_ids", "run_fleet", "start_fleet"]
