"""EdgeLinkActor: the edge end of the cloud command channel (reserved; the cloud-channel issue fills it).

It will keep the site's persistent WebSocket to the router (on the I/O loop, with pings and capped
reconnect backoff with full jitter), journal each command it receives before acknowledging delivery,
validate and hand it to the dispatcher as a message, and send the command's states back as acks
(DELIVERED, ACCEPTED, EXECUTED, or the refusal with its reason), counting expiry on the edge's own
monotonic clock. It speaks the wire format of :mod:`protocols.edge`.
"""
