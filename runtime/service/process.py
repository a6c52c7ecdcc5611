"""``coordinator run site.toml``: the site as a long-running process next to the hardware.

:class:`SiteProcess` builds a :class:`~runtime.site.Site` from a validated
:class:`~runtime.config.models.SiteConfig` (devices, OCPP server, journal, policies, grid limit), runs
it on the real clock, starts its components on the site's I/O loop (the local HTTP API with metrics and
health checks, the watched folder; each optional), and runs until SIGTERM or SIGINT.

Shutdown on a signal, bounded by ``[shutdown] timeout_s`` (default 10 s):

1. stop taking work: the components stop (the HTTP API refuses new work, the folder is no longer read);
2. let in-flight commands finish: wait until none is DISPATCHED or ACKNOWLEDGED, at most until the
   deadline (whatever is still in flight then stays journaled as in flight and is sent again after a
   restart: setpoints are absolute);
3. stop the site: actors, journal (synced and closed), devices and sockets;
4. exit 0.

Interpreter settings (:func:`tune_interpreter`, on by default here, never in an embedded
:class:`~runtime.site.Site`, whose host application owns its interpreter): the garbage collector is paused
while the site starts (it allocates the long-lived objects of every asset at once, and the collections then
find nothing to free); once the site has started, the objects that live for the whole run (actors, specs,
links, recovered commands) are collected once and frozen out of the garbage collector (``gc.freeze()``), so
later collections do not walk them again; and the GIL switch interval is raised from CPython's 5 ms to
:data:`SWITCH_INTERVAL_S`, so that the one thread per asset hand the GIL over less often under load (a
thread that blocks or waits hands it over at once, whatever the interval). Where the C library is glibc, its
mmap threshold is fixed (:mod:`.allocator`), before the site is built, so that glibc never raises it.
``SiteProcess(tune=False)`` leaves the interpreter as it is.

A site that fails on its own (its dispatcher, event actor or cloud link died) makes the process exit 1; a bad
configuration exits 2 before anything starts. After kill -9, starting the process again recovers every
accepted command that was not final from the journal and completes it; final commands are never
applied again.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from runtime.config.build import asset_specs, site_options
from runtime.config.models import SiteConfig
from runtime.core.clock import Clock
from runtime.core.errors import SiteFailed
from runtime.core.grid import GridLimit
from runtime.site import Site

from .allocator import MMAP_THRESHOLD_BYTES, fix_mmap_threshold
from .simulate import Simulators

log = logging.getLogger(__name__)

__all__ = ["SiteProcess", "Component", "EXIT_OK", "EXIT_FAILED", "EXIT_BAD_CONFIG", "SWITCH_INTERVAL_S",
           "tune_interpreter"]

EXIT_OK, EXIT_FAILED, EXIT_BAD_CONFIG = 0, 1, 2

#: The GIL switch interval of the site process (CPython's default is 0.005 s); see the module docstring.
SWITCH_INTERVAL_S = 0.01


def tune_interpreter(switch_interval_s: float | None = SWITCH_INTERVAL_S, freeze: bool = True,
                     mmap_threshold_bytes: int | None = MMAP_THRESHOLD_BYTES) -> dict[str, Any]:
    """Apply the site process's interpreter settings (see the module docstring); returns what was set.
    Call it once the long-lived objects exist (after the site started). ``mmap_threshold_bytes`` None leaves
    the C allocator as it is."""
    done: dict[str, Any] = {}
    if mmap_threshold_bytes is not None and fix_mmap_threshold(mmap_threshold_bytes):
        done["mmap_threshold_bytes"] = mmap_threshold_bytes
    if switch_interval_s is not None:
        sys.setswitchinterval(switch_interval_s)
        done["switch_interval_s"] = switch_interval_s
    if freeze:
        gc.collect()
        gc.freeze()
        done["gc_frozen"] = gc.get_freeze_count()
    return done


class Component(Protocol):
    """A part of the site process that runs on the site's I/O loop (HTTP API, watched folder, ...).
    ``start`` and ``stop`` are awaited on that loop; ``stop`` must end everything it started."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


ComponentFactory = Callable[[Site, SiteConfig], "Component | None"]


def default_components() -> list[ComponentFactory]:
    """The components a configuration may switch on (each factory returns None when not configured)."""
    factories: list[ComponentFactory] = []
    try:
        from .http_api import http_component
        factories.append(http_component)
    except ImportError:  # pragma: no cover - not built yet
        pass
    try:
        from .folder import folder_component
        factories.append(folder_component)
    except ImportError:  # pragma: no cover
        pass
    return factories


class SiteProcess:
    """A configured site as a process (see the module docstring).

    ``simulate``: start every configured device as a simulator in this process (see
    :mod:`runtime.service.simulate`) instead of connecting to real hardware. ``clock``: for tests (a real
    clock by default). ``components``: factories of the components to start (default: HTTP API and
    watched folder, when configured). ``tune``: apply :func:`tune_interpreter` once the site and its
    components have started (``coordinator run`` does; off by default for a SiteProcess made in a process
    that does other things, as tests do).
    """

    def __init__(self, config: SiteConfig, *, simulate: bool = False, clock: Clock | None = None,
                 components: Iterable[ComponentFactory] | None = None, tune: bool = False) -> None:
        self.config = config
        self._tune = tune
        self.simulators = Simulators(config) if simulate else None
        self._clock = clock
        self._factories = list(default_components() if components is None else components)
        self.site: Site | None = None
        self.components: list[Component] = []
        self._stop = threading.Event()
        self._signal: int | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "SiteProcess":
        """Start the simulators (if any), the site and its components. On failure everything started
        so far is stopped again and the error propagates."""
        try:
            self._start()
        except BaseException:
            self.shutdown(timeout_s=0)
            raise
        return self

    def _start(self) -> None:
        config = self.config
        if self._tune:
            fix_mmap_threshold()   # before the site is built: the sooner, the fewer raises glibc made (.allocator)
        links = self.simulators.start_batteries() if self.simulators is not None else None
        options = site_options(config)
        if self.simulators is not None and options.get("ocpp") is not None:
            # a free port: no clash; the simulated chargers' security profile
            options["ocpp"] = {**self.simulators.secure(options["ocpp"]), "host": "127.0.0.1", "port": 0}
        g = config.grid
        grid = GridLimit(import_kw=g.import_limit_kw, export_kw=g.export_limit_kw, policy=g.policy)
        self.site = Site(asset_specs(config, links), clock=self._clock, grid=grid,
                         priorities={a.id: a.priority for a in config.assets if a.priority}, cloud=config.cloud,
                         **options)
        paused = self._tune and gc.isenabled()
        if paused:
            gc.disable()  # for the start-up only (see the module docstring)
        try:
            self._start_site(config, options)
        finally:
            if paused:
                gc.enable()
        if self._tune:
            log.info("interpreter tuned for the site process: %s", tune_interpreter())

    def _start_site(self, config: SiteConfig, options: dict[str, Any]) -> None:
        assert self.site is not None
        self.site.start()
        log.info("site %s running with %d assets (journal %s)", config.site.name, len(config.assets),
                 config.journal.dir)
        if self.simulators is not None and options.get("ocpp") is not None:
            self.simulators.start_chargers(self.site.service("ocpp").url)
        for factory in self._factories:
            component = factory(self.site, config)
            if component is None:
                continue
            self.site.run_coroutine(component.start()).result(timeout=30)
            self.components.append(component)
            log.info("%s started", component.name)

    def run(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> int:
        """Start (if needed) and run until one of ``signals`` (main thread only) or :meth:`request_stop`;
        then shut down. Returns the exit code: 0 after a signal, 1 when the site failed on its own."""
        installed: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            installed = {sig: signal.signal(sig, self._on_signal) for sig in signals}
        try:
            if self.site is None:
                self.start()
            assert self.site is not None
            log.info("site %s ready; SIGTERM or SIGINT stops it", self.config.site.name)
            while not self._stop.is_set() and self.site.state == "running":
                self._stop.wait(0.5)  # also notices a site that failed on its own
            failure = self.site.failure
        finally:
            for sig, handler in installed.items():
                signal.signal(sig, handler)
        if failure is not None:
            log.error("site %s failed: %s", self.config.site.name, failure)
            self.shutdown()
            return EXIT_FAILED
        log.info("site %s stopping (signal %s)", self.config.site.name, self._signal)
        self.shutdown()
        return EXIT_OK

    def request_stop(self) -> None:
        """Ask :meth:`run` to shut down (thread-safe; what a signal does)."""
        self._stop.set()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signal = signum
        self._stop.set()

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Stop taking work, let in-flight commands finish (until the deadline), stop the site and the
        simulators. Idempotent."""
        timeout = self.config.shutdown.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        site = self.site
        for component in reversed(self.components):
            try:
                if site is not None and site.running:
                    site.run_coroutine(component.stop()).result(timeout=max(1.0, deadline - time.monotonic()))
            except Exception:
                log.exception("stopping %s failed", component.name)
        self.components.clear()
        if site is not None and site.running:
            in_flight = self._drain(site, deadline)
            if in_flight:
                log.warning("shutdown: %d command(s) still in flight after %.1f s; they stay journaled and are "
                            "sent again after a restart", in_flight, timeout)
        if site is not None:
            site.stop()
        if self.simulators is not None:
            self.simulators.stop()

    @staticmethod
    def _drain(site: Site, deadline: float) -> int:
        """Wait (bounded) until no command is in flight; returns how many still are."""
        while True:
            try:
                counts = site.counts()
            except SiteFailed:
                return 0
            in_flight = counts["DISPATCHED"] + counts["ACKNOWLEDGED"]
            if in_flight == 0 or time.monotonic() >= deadline:
                return in_flight
            time.sleep(0.05)  # a bounded poll of the site's own counts, not a wait on logic
