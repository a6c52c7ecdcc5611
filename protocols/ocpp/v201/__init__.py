"""OCPP 2.0.1: the central system's per-connection handlers and the 2.0.1 charging-profile builder.

Laid out like ``ocpp.v201`` itself: everything specific to 2.0.1 lives here, everything shared by
both versions lives one level up in :mod:`protocols.ocpp`.
"""
