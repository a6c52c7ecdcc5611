"""OCPP 1.6 (JSON): the central system's per-connection handlers and the 1.6 charging-profile builder.

Laid out like ``ocpp.v16`` itself: everything specific to 1.6 lives here, everything shared by both
versions lives one level up in :mod:`protocols.ocpp`.
"""
