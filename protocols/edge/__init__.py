"""The edge wire format shared by the cloud router and the edge (:mod:`protocols.edge.wire`): versioned
frames, msgpack or JSON, validated, with the channel names an edge publishes
(:mod:`protocols.edge.channels`). Both :mod:`runtime.router` and :mod:`actors.edge_link` import it; it
imports only the ground floor.
"""
