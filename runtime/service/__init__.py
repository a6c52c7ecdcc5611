"""The site as a long-running process (reserved; the site-process issue fills it).

``coordinator run site.toml`` will live here: a site configuration file validated on load (assets,
device connections, the OCPP server, journal, retry and timeout policy, the site grid limit, metrics
and HTTP API addresses, schedule sources, the cloud link), ``coordinator check`` to validate it
without starting anything, a site started on a real clock against the configured devices, metrics,
and clean shutdown on SIGTERM/SIGINT. It composes a :class:`~runtime.site.Site`; nothing below
imports it.
"""
