"""Device simulators (an OCPP charge point in :mod:`protocols.sim.chargepoint`), usable from tests,
scenarios and the ``coordinator sim`` command."""
