"""The site as a long-running process: ``coordinator run site.toml`` and ``coordinator check site.toml``.

* :mod:`.process`: :class:`SiteProcess`: the configured site on the real clock, its components, signals
  and the bounded graceful shutdown;
* :mod:`.simulate`: ``--simulate``: every configured device as a simulator in the same process;
* :mod:`.check`: validation and the ``--connect`` device probe;
* :mod:`.gateway`: the site asked from the asyncio loop, without blocking it;
* :mod:`.http_api`, :mod:`.metrics`: the local HTTP API, Prometheus metrics, /healthz and /readyz;
* :mod:`.folder`: the watched folder of schedule files;
* :mod:`.logs`: text or JSON log lines.

It composes a :class:`~runtime.site.Site` from :mod:`runtime.config`; nothing below imports it.
"""
