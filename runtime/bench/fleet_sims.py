"""The fleet benchmark's simulator processes: ``coordinator sim battery`` and ``coordinator sim ocpp``
started as child processes (``python -m runtime.cli sim ...``), their output drained by a thread, and
stopped with SIGTERM (then SIGKILL). Used by both sides of the fleet benchmark and by the soak
(:mod:`.soak`), which also sends them fault-injection lines (``control``, :mod:`protocols.sim.control`).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["SimProcess", "start_batteries", "charger_args", "ID_PREFIX", "ROOT"]

ROOT = Path(__file__).resolve().parents[2]
ID_PREFIX = "CP"
BATTERY_LINE = re.compile(r"battery simulator (\S+) listening on ([\d.]+):(\d+) unit (\d+)")


class SimProcess:
    """A ``coordinator sim ...`` child process; its output is drained by a thread (kept: the last lines)."""

    def __init__(self, name: str, args: Sequence[str], on_line: Callable[[str], None] | None = None,
                 control: bool = False) -> None:
        self.name = name
        self.lines: deque[str] = deque(maxlen=200)
        self._on_line = on_line
        self._lock = threading.Lock()
        args = [*args, "--control"] if control else list(args)
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "sim", *args], cwd=ROOT,
                                     stdin=subprocess.PIPE if control else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._drain, name=f"bench-{name}-output", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if self._on_line is not None:
                try:
                    self._on_line(line)
                except Exception:  # pragma: no cover - a parser bug must not stop the draining
                    pass

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 8) -> str:
        return " | ".join(list(self.lines)[-n:]) or "(no output)"

    def check_alive(self) -> None:
        if not self.alive:
            raise RuntimeError(f"{self.name} simulator process exited with {self.proc.returncode}: {self.tail()}")

    def send(self, line: str) -> bool:
        """A control line to a simulator started with ``control`` (:mod:`protocols.sim.control`; its answer
        comes as an output line). False when the process no longer takes input."""
        with self._lock:
            if self.proc.stdin is None or self.proc.stdin.closed or not self.alive:
                return False
            try:
                self.proc.stdin.write(line.rstrip("\n") + "\n")
                self.proc.stdin.flush()
                return True
            except (OSError, ValueError):  # the process went away meanwhile
                return False

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the simulators stop cleanly), wait; SIGKILL after ``timeout``. Idempotent."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        with self._lock:
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None and not f.closed:
                    try:
                        f.close()
                    except OSError:  # a broken pipe on the last flush
                        pass
        return self.proc.returncode


def start_batteries(count: int, timeout: float = 60.0, control: bool = False,
                    on_line: Callable[[str], None] | None = None) -> tuple[SimProcess, list[int]]:
    """The battery simulator process and its ports (battery i listens on ports[i]); ``control``: it takes
    fault-injection lines (:meth:`SimProcess.send`); ``on_line`` gets every output line after the start-up."""
    ports: dict[int, int] = {}
    ready = threading.Event()

    def parse(line: str) -> None:
        if ready.is_set():
            if on_line is not None:
                on_line(line)
            return
        m = BATTERY_LINE.search(line)
        if m:
            ports[int(m.group(1).rsplit("-", 1)[-1])] = int(m.group(3))
        elif "battery simulator(s) running" in line:
            ready.set()

    sim = SimProcess("battery", ["battery", "--port", "0", "--count", str(count)], parse, control=control)
    try:
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            sim.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"battery simulators not up within {timeout:g} s: {sim.tail()}")
        if len(ports) != count:
            raise RuntimeError(f"battery simulators: {len(ports)} ports announced, expected {count}: {sim.tail()}")
        return sim, [ports[i] for i in range(count)]
    except BaseException:
        sim.stop()
        raise


def charger_args(url: str, count: int, version: str, concurrency: int) -> list[str]:
    return ["ocpp", "--count", str(count), "--url", url, "--version", version, "--id-prefix", ID_PREFIX,
            "--meter-interval", "0", "--no-validation", "--concurrency", str(concurrency), "--log-level", "WARNING"]
