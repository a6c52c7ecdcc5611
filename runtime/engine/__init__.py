"""The seed-compatible synchronous engine: :class:`~runtime.engine.dispatch.DispatchEngine` and its
protocol adapters (:mod:`runtime.engine.adapters`), usable without actors, threads or sockets.

It stands on the ground floor (the same command table the dispatcher actor uses) and on the protocol
code it translates with (the OCPP profile builders, the Modbus codec); nothing below imports it.
"""
