"""``coordinator bench --only site``: the site as people run it.

* :func:`bench_idle`: ``coordinator run site.toml`` as a process of its own, idling with 50 OCPP chargers
  and 4 Modbus batteries connected (simulators in separate processes: ``coordinator sim ocpp`` and
  ``coordinator sim battery``). Once every charger is online and the batteries have been polled, the
  site process's CPU time (from /proc) is measured over ``seconds`` of wall time, and its RSS. Targets:
  under 1 % of one core, under 150 MB.
* :func:`bench_depot` (when the scenario runner can drive simulators): the 50-charger depot scenario on
  simulators over real sockets, 24 virtual hours: wall time, commands/s, RSS.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from protocols.sim.fleet import fleet_ids

from .fleet_sims import ROOT, SimProcess, start_batteries

__all__ = ["bench_idle", "bench_depot", "TARGETS"]

TARGETS = {"idle_cpu_pct": 1.0, "idle_rss_mb": 150.0}
_ONLINE = re.compile(r"charge point (\S+) online")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _site_file(folder: Path, chargers: list[str], battery_ports: list[int], ocpp_port: int) -> Path:
    lines = ['[site]\nname = "bench-idle"\n']
    for cp in chargers:
        lines.append(f'[[assets]]\nid = "ev-{cp}"\nkind = "charger"\nmax_kw = 22\nocpp = {{ charge_point_id = "{cp}" }}\n')
    for i, port in enumerate(battery_ports):
        lines.append(f'[[assets]]\nid = "bat-{i}"\nkind = "battery"\n'
                     f'modbus = {{ host = "127.0.0.1", port = {port}, poll_interval_s = 5.0 }}\n')
    lines.append(f'[ocpp]\nhost = "127.0.0.1"\nport = {ocpp_port}\n[journal]\ndir = "{folder / "journal"}"\n')
    path = folder / "site.toml"
    path.write_text("\n".join(lines))
    return path


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover


class _SiteProcess:
    """``coordinator run FILE`` as a child process; counts the chargers its log reports online."""

    def __init__(self, path: Path) -> None:
        self.online: set[str] = set()
        self.lines: deque[str] = deque(maxlen=50)
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(path), "--log-level", "INFO"],
                                     cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._drain, name="bench-site-log", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            m = _ONLINE.search(line)
            if m:
                self.online.add(m.group(1))

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        return self.proc.returncode


def bench_idle(n_chargers: int = 50, n_batteries: int = 4, seconds: float = 30.0,
               connect_timeout: float = 90.0) -> dict[str, Any]:
    """See the module docstring. Every process is stopped before this returns, also on errors."""
    procs: list[Any] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-site-") as tmp:
            batteries, ports = start_batteries(n_batteries) if n_batteries else (None, [])
            if batteries is not None:
                procs.append(batteries)
            ocpp_port = _free_port()
            chargers = fleet_ids(n_chargers, "CP")
            site = _SiteProcess(_site_file(Path(tmp), chargers, ports, ocpp_port))
            procs.append(site)
            fleet = SimProcess("ocpp", ["ocpp", "--count", str(n_chargers), "--url", f"ws://127.0.0.1:{ocpp_port}",
                                        "--meter-interval", "60", "--retry-base", "0.2", "--retry-cap", "2",
                                        "--log-level", "WARNING"])
            procs.append(fleet)
            t0 = time.monotonic()
            while len(site.online) < n_chargers:
                if site.proc.poll() is not None:
                    raise RuntimeError(f"the site process exited with {site.proc.returncode}: {list(site.lines)[-5:]}")
                if time.monotonic() - t0 > connect_timeout:
                    raise RuntimeError(f"{len(site.online)} of {n_chargers} chargers online within {connect_timeout:g} s")
                time.sleep(0.2)   # a bounded wait on the child's log, in a benchmark
            connect_s = time.monotonic() - t0
            time.sleep(10)        # the batteries are polled and everything settles before measuring
            pid = site.proc.pid
            cpu0, wall0 = _cpu_s(pid), time.monotonic()
            time.sleep(seconds)
            cpu, wall = _cpu_s(pid) - cpu0, time.monotonic() - wall0
            rss = _rss_mb(pid)
            stop_t = time.monotonic()
            code = site.stop()
            return {"chargers": n_chargers, "batteries": n_batteries, "connect_s": round(connect_s, 1),
                    "idle_s": round(wall, 1), "cpu_pct": round(100.0 * cpu / wall, 2), "rss_mb": round(rss, 1),
                    "stop_s": round(time.monotonic() - stop_t, 2), "exit_code": code}
    finally:
        for p in reversed(procs):
            p.stop()


def bench_depot(hours: float = 24.0, devices: str = "sim") -> dict[str, Any]:
    """The shipped depot scenario (50 chargers, 2 batteries, a binding grid limit) stretched to ``hours``
    virtual hours on a 5-minute schedule whose values change every step, on the simulators over real
    sockets (``devices="sim"``): wall time, commands and commands per wall second, RSS after the run."""
    import dataclasses
    import io

    import numpy as np
    import pandas as pd

    from runtime.scenario import load_scenario, run_scenario

    base = load_scenario(ROOT / "scenarios" / "depot_peak.toml")
    steps = int(hours * 12)
    index = pd.date_range(base.start, periods=steps, freq="5min")
    rng = np.random.default_rng(0)
    columns = {}
    for name in base.schedule.columns:
        columns[name] = np.round(rng.uniform(0.0, 22.0 if name.startswith("ev") else 20.0, size=steps), 1)
    for name in [c for c in columns if c.endswith("_charge_kw")]:   # a battery charges or discharges, not both
        discharge = name.replace("_charge_kw", "_discharge_kw")
        if discharge in columns:
            charging = rng.random(steps) < 0.5
            columns[name] = np.where(charging, columns[name], 0.0)
            columns[discharge] = np.where(charging, 0.0, columns[discharge])
    scenario = dataclasses.replace(base, schedule=pd.DataFrame(columns, index=index), events=(),
                                   duration_s=hours * 3600.0, expect=type(base.expect)())
    t0 = time.perf_counter()
    result = run_scenario(scenario, devices=devices, out=io.StringIO(), as_json=True, progress=False)
    wall = time.perf_counter() - t0
    commands = sum(result.counts.values())
    from runtime.core.commands import FINAL_STATUSES
    final = {s.value for s in FINAL_STATUSES}
    return {"hours": hours, "devices": devices, "assets": len(base.assets), "commands": commands,
            "wall_s": round(wall, 1), "commands_per_s": round(commands / wall, 1),
            "completed": result.counts.get("COMPLETED", 0),
            "not_final": sum(n for status, n in result.counts.items() if status not in final),
            "rss_mb": round(_rss_mb(os.getpid()), 1)}
