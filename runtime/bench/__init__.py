"""``coordinator bench``: performance figures, printed (never asserted in the test suite).

Parts (``--only NAME`` to run one), one module each:

* ``schedule``   (:mod:`.schedule`) schedule_to_commands on 1,000 assets x 288 intervals vs a row-by-row
                 reference, both timed in the same run.
* ``dispatcher`` (:mod:`.dispatcher`) the dispatcher's own bookkeeping per command (and the event actor's),
                 on one thread, journal on, with a no-op asset side.
* ``throughput`` (:mod:`.throughput`) commands/s through dispatcher -> asset actor -> in-memory device ->
                 ack -> COMPLETED, journal on, for steps of 1 and of 4 setpoints per battery, beside
                 the bare-pykka ceiling measured in the same run; with the interpreter as an embedded
                 Site finds it, then with the site process's settings (``coordinator run``).
* ``latency``    (:mod:`.latency`) one command at a time on an idle site with in-memory devices: p50/p99.
* ``ocpp``       (:mod:`.ocpp_single`) one SetChargingProfile at a time through the site against a bare
  ``ocpp`` library call in the same process: p50/p99 and their ratio (target 1.5x).
* ``startup``    (:mod:`.startup`) start-up time, stop time and RSS of a site with 2,000 asset actors,
                 beside bare pykka starting 2,000 empty actors in the same run.
* ``fleet``      (:mod:`.fleet`) one schedule step to 500 OCPP chargers + 50 Modbus batteries (simulators
                 in separate processes), ours against a bare ocpp/pymodbus script (:mod:`.fleet_bare`).
* ``site``       (:mod:`.site`) ``coordinator run`` idling with 50 chargers and 4 batteries connected: CPU, RSS.
* ``journal``    (:mod:`.journal`) 30 virtual days of a 50-charger site: journal size per day, restart time
                 at days 1, 7 and 30, bytes per command against the version-1 format.
* ``cloud``      (:mod:`.cloud`) the command router: commands/s and p50/p99 operator -> router -> 100 fake edges
                 -> EXECUTED, alone and through two routers over Redis; 500 edges reconnecting at once.

Not a part: ``coordinator bench soak --minutes N`` (:mod:`.soak`) runs the whole system with faults for a while
(500 OCPP chargers and 50 Modbus batteries on simulators, a site with a schedule, the cloud router and a client)
and reports commands/s, p99 latency, RSS growth per hour and what leaked.

This package's ``__init__`` imports nothing heavy: the bare fleet process (``python -m
runtime.bench.fleet_bare``) runs through it and must stay lean. Each part is imported when it runs.
"""

from __future__ import annotations

import sys
from typing import Callable, TextIO

from .interpreter import interpreter
from .report import print_figures

__all__ = ["run_bench", "TARGETS"]

TARGETS = {"schedule_ms": 100.0, "schedule_speedup": 50.0, "dispatcher_us": 20.0,
           "throughput_per_s": {1: 10_000.0, 4: 25_000.0}, "latency_p99_ms": 1.0,
           "startup_s": 5.0, "startup_vs_bare": 2.0, "startup_rss_mb": 600.0}


def run_bench(quick: bool = False, only: list[str] | None = None, out: TextIO | None = None) -> int:
    """Run the benchmark parts and print figures with their targets. Returns 0 (figures, not a test),
    2 for an unknown part."""
    out = out or sys.stdout
    n = (lambda small, full: small) if quick else (lambda small, full: full)

    def schedule() -> None:
        from .schedule import run_schedule_bench
        r = run_schedule_bench(n_assets=n(200, 1000))
        print_figures(out, "schedule", r, [
            (f"ours <= {TARGETS['schedule_ms']:g} ms", r["ours_ms"] <= TARGETS["schedule_ms"]),
            (f"speedup >= {TARGETS['schedule_speedup']:g}x", r["speedup"] >= TARGETS["schedule_speedup"])])

    def dispatcher() -> None:
        from .dispatcher import bench_dispatcher
        for channels in (1, 4):
            r = bench_dispatcher(n_assets=n(200, 1000), waves=n(5, 20), channels=channels)
            print_figures(out, "dispatcher", r, [
                (f"<= {TARGETS['dispatcher_us']:g} us per command", r["us_per_command"] <= TARGETS["dispatcher_us"]),
                ("every command COMPLETED", r["all_completed"])])

    def throughput() -> None:
        from .throughput import bench_pykka_ceiling, bench_throughput
        for tuned in (False, True):
            with interpreter(tuned) as setting:
                r = bench_pykka_ceiling(n_actors=n(200, 1000))
                r["interpreter"] = setting
                print_figures(out, "ceiling", r, [("bare pykka hub -> leaf -> hub, no work: the most any actor "
                                                   "design with one thread per asset gets here", True)])
                for channels in (1, 4):
                    r = bench_throughput(n_assets=n(200, 1000), waves=n(5, 20), channels=channels)
                    r["interpreter"] = setting
                    target = TARGETS["throughput_per_s"][channels]
                    print_figures(out, "throughput", r, [
                        (f">= {target:g} commands/s", r["commands_per_s"] >= target),
                        ("every command COMPLETED", r["all_completed"])])

    def latency() -> None:
        from .latency import bench_single_command
        r = bench_single_command(samples=n(200, 1000))
        print_figures(out, "latency", r, [
            (f"p99 < {TARGETS['latency_p99_ms']:g} ms", r["p99_ms"] < TARGETS["latency_p99_ms"]),
            ("every command COMPLETED", r["timeouts"] == 0)])

    def ocpp() -> None:
        from .ocpp_single import TARGET_RATIO, bench_ocpp_single
        r = bench_ocpp_single(samples=n(50, 300))
        print_figures(out, "ocpp single", r, [
            (f"ours <= {TARGET_RATIO:g}x bare (p50)", (r["ratio_p50"] or 99) <= TARGET_RATIO),
            (f"ours <= {TARGET_RATIO:g}x bare (p99)", (r["ratio_p99"] or 99) <= TARGET_RATIO)])

    def startup() -> None:
        from .startup import bench_bare_startup, bench_startup
        for pause_gc in (False, True):
            setting = "site process (gc paused, then frozen)" if pause_gc else "default"
            bare = bench_bare_startup(n_actors=n(200, 2000), pause_gc=pause_gc)
            bare["interpreter"] = setting
            print_figures(out, "bare start", bare, [("bare pykka starting as many empty actors: the reference",
                                                     True)])
            r = bench_startup(n_assets=n(200, 2000), pause_gc=pause_gc)
            r["vs_bare"] = round(r["start_s"] / max(bare["start_s"], 1e-9), 2)
            r["interpreter"] = setting
            print_figures(out, "startup", r, [
                (f"start <= {TARGETS['startup_s']:g} s", r["start_s"] <= TARGETS["startup_s"]),
                (f"start <= {TARGETS['startup_vs_bare']:g}x bare pykka", r["vs_bare"] <= TARGETS["startup_vs_bare"]),
                (f"rss <= {TARGETS['startup_rss_mb']:g} MB", r["rss_mb"] <= TARGETS["startup_rss_mb"])])

    def fleet() -> None:
        from .fleet import run_fleet_bench_part
        run_fleet_bench_part(out, quick)

    def site() -> None:
        from .site import TARGETS as SITE, bench_depot, bench_idle
        r = bench_depot(hours=n(2.0, 24.0))
        print_figures(out, "site depot", r, [("every command final", r["commands"] > 0 and r["not_final"] == 0)])
        r = bench_idle(n_chargers=n(10, 50), n_batteries=n(2, 4), seconds=n(5.0, 30.0))
        print_figures(out, "site idle", r, [
            (f"cpu < {SITE['idle_cpu_pct']:g} % of one core", r["cpu_pct"] < SITE["idle_cpu_pct"]),
            (f"rss < {SITE['idle_rss_mb']:g} MB", r["rss_mb"] < SITE["idle_rss_mb"]),
            ("stopped cleanly by SIGTERM (exit 0)", r["exit_code"] == 0)])

    def journal() -> None:
        from .journal import TARGETS as J, bench_journal
        r = bench_journal(days=n(3, 30), n_chargers=n(10, 50), restart_days=n((1, 2, 3), (1, 7, 30)))
        cmd = r["commands_mb_per_day"]
        flat = len(cmd) < 3 or max(cmd[1:]) <= 1.5 * min(cmd[1:])
        last = max(r["restart_s"])
        print_figures(out, "journal", r, [
            ("command journal flat after day 1", flat),
            (f"whole journal <= {J['max_mb']:g} MB every day", max(r["mb_per_day"]) <= J["max_mb"]),
            (f"restart at day {last} <= {J['restart_s']:g} s", r["restart_s"][last] <= J["restart_s"]),
            (f"bytes per command >= {J['ratio']:g}x smaller than version 1", r["ratio"] >= J["ratio"])])

    def cloud() -> None:
        from .cloud import run_cloud_bench_part
        run_cloud_bench_part(out, quick)

    parts: dict[str, Callable[[], None]] = {"schedule": schedule, "dispatcher": dispatcher, "throughput": throughput,
                                            "latency": latency, "ocpp": ocpp, "startup": startup,
                                            "fleet": fleet, "site": site, "journal": journal, "cloud": cloud}
    for name in only or list(parts):
        if name not in parts:
            print(f"unknown bench part {name!r}; choose from {', '.join(parts)}", file=out)
            return 2
        parts[name]()
        out.flush()
    return 0
