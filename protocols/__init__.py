"""Device and wire boundaries.

* :mod:`.base`: the device boundary every asset actor talks to (``DeviceLink``, results, reports);
* :mod:`.memory`: an in-memory simulated device;
* :mod:`.ocpp`: OCPP 1.6 + 2.0.1 central system and charger link; :mod:`.modbus`: Modbus TCP batteries;
* :mod:`.edge`: the wire format between a site and the cloud router;
* :mod:`.sim`: protocol simulators (charge points, batteries) for tests, scenarios and benchmarks.

Protocol code imports only the ground floor (``runtime.core``), never actors or the site.
"""
