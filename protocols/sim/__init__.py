"""Device simulators usable from tests, scenarios and the ``coordinator sim`` command: OCPP charge points
(:mod:`protocols.sim.chargepoint`) and Modbus TCP batteries (:mod:`protocols.sim.battery`)."""
