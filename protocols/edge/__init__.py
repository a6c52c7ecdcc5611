"""The edge wire format shared by the cloud router and the edge (reserved; the cloud-channel issue fills it).

It will define the frames that cross the persistent WebSocket between a site (the edge) and the
router: versioned msgpack (JSON accepted from browsers and tools) for commands (command_id,
command_type, target, value, unit, expiry_sec as the time left, priority, duration_sec, source,
timestamp), acks (command_id, status, executed_at, error), capabilities, telemetry and pings, with
their validation. Both :mod:`runtime.router` and :mod:`actors.edge_link` import it; it imports only
the ground floor.
"""
