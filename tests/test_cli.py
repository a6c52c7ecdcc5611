"""The ``coordinator`` command as a user runs it: a real process (``python -m runtime.cli ...``).

Covered: ``--version`` and ``--help`` (plain text, readable choices, help for every option), bad input
(exit 2, one line, no traceback) and ``coordinator sim ocpp`` started before its central system (it
keeps retrying, connects every charger once the central system listens, and exits 0 on SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from protocols.ocpp import CentralSystem
from runtime.cli import build_parser

from .asyncsupport import run, settle

ROOT = Path(__file__).resolve().parents[1]
CLI = (sys.executable, "-m", "runtime.cli")
pytestmark = pytest.mark.timeout(60)


def coordinator(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run ``coordinator ARGS`` to its end (bounded: a command that idles instead of exiting fails)."""
    return subprocess.run([*CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def free_port() -> int:
    """A TCP port nothing listens on right now (bound to port 0, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def subparsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every (command path, parser) of the ``coordinator`` parser tree, the top level first."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += subparsers(sub, (*path, name))
    return found


# ---- --version and --help -----------------------------------------------------------------------

def test_version_prints_the_installed_package_version() -> None:
    res = coordinator("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"coordinator {importlib.metadata.version('qubit-energy-coordinator')}"


def test_version_falls_back_to_pyproject_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    from runtime import cli

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert cli.version() == f"{declared} (not installed)"


def test_help_is_plain_text_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    """Every subcommand's --help, parsed in this process (one process per subcommand took over a minute on
    a loaded machine), and the real command's top-level --help."""
    paths = [path for path, _ in subparsers(build_parser())]
    assert ("sim", "ocpp") in paths and ("sim", "battery") in paths
    for path in paths:
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([*path, "--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and out.startswith("usage: coordinator"), (path, out)
        for markup in ("``", ":mod:", ":class:", ":func:"):
            assert markup not in out, (path, markup, out)
    top = coordinator("--help")
    assert top.returncode == 0 and "--version" in top.stdout and "sim" in top.stdout


def test_accepted_unit_reads_as_three_choices() -> None:
    out = coordinator("sim", "ocpp", "--help").stdout
    assert "{W,A,A,W}" not in out
    assert "A,W" in out and "--accepted-unit UNIT" in out


def test_every_option_has_help_text() -> None:
    for path, parser in subparsers(build_parser()):
        for action in parser._actions:
            if action.option_strings:
                assert action.help, f"coordinator {' '.join(path)} {action.option_strings[0]} has no help text"


# ---- bad input: exit 2, no traceback ------------------------------------------------------------

@pytest.mark.parametrize("url, why", [
    ("http://127.0.0.1:9000", "ws"),
    ("127.0.0.1:9000", "ws"),
    ("ws://", "host"),
    ("ws://127.0.0.1:99999", "port"),
    ("ws://127.0.0.1:abc", "port"),
    ("ws://[::1", "parse"),
])
def test_sim_ocpp_rejects_a_malformed_url_at_once(url: str, why: str) -> None:
    res = coordinator("sim", "ocpp", "--count", "2", "--url", url)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert url in lines[0] and why in lines[0].lower(), lines[0]


@pytest.mark.parametrize("args", [
    ("sim", "ocpp", "--count", "0"),
    ("sim", "ocpp", "--count", "-3"),
    ("sim", "ocpp", "--concurrency", "0"),
    ("sim", "ocpp", "--meter-interval", "-1"),
    ("sim", "ocpp", "--max-kw", "nan"),
    ("sim", "ocpp", "--log-level", "LOUD"),
    ("sim", "ocpp", "--retry-base", "0"),
    ("sim", "ocpp", "--retry-base", "2", "--retry-cap", "1"),
    ("sim", "ocpp", "--accepted-unit", "W,A"),
    ("sim", "battery", "--port", "-1"),
    ("sim", "battery", "--port", "65535", "--count", "2"),
    ("sim", "battery", "--count", "0"),
    ("sim", "battery", "--device-id", "999"),
    ("sim", "battery", "--soc", "150"),
    ("bench", "--only", "nonsense"),
    ("scenario", "/nonexistent/scenario.toml"),
    ("scenario", str(ROOT / "tests")),
    ("nonsense",),
])
def test_bad_input_exits_2_without_a_traceback(args: tuple[str, ...]) -> None:
    res = coordinator(*args)
    assert res.returncode == 2, (args, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout


def test_url_check_names_what_is_wrong() -> None:
    from protocols.sim.fleet import check_url
    assert check_url("ws://127.0.0.1:9000/ocpp/") == "ws://127.0.0.1:9000/ocpp/"
    assert check_url("WSS://cs.example.com") == "WSS://cs.example.com"
    for url, why in [("ftp://h", "scheme"), ("ws://h:0", "port"), ("ws://h/x?a=1", "query"),
                     ("ws://h st:9000", "whitespace")]:
        with pytest.raises(ValueError, match=why):
            check_url(url)


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    from protocols.sim.fleet import Backoff
    backoff = Backoff(base=0.5, cap=30.0, rng=random.Random(7))
    assert [backoff.ceiling(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    for n in range(1, 40):
        assert 0.0 <= backoff.delay(n) <= backoff.ceiling(n)
    with pytest.raises(ValueError):
        Backoff(base=2.0, cap=1.0)


# ---- sim ocpp before its central system ---------------------------------------------------------

def test_sim_ocpp_keeps_retrying_until_the_central_system_is_up() -> None:
    """The fleet process starts first; each charger connects once the central system listens, and connects
    again after the central system restarts; SIGTERM stops it with exit code 0."""
    port = free_port()

    async def body() -> None:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "sim", "ocpp", "--count", "3", "--url", f"ws://127.0.0.1:{port}", "--meter-interval", "0",
            "--retry-base", "0.05", "--retry-cap", "0.2", cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        lines: list[str] = []

        async def drain() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                lines.append(raw.decode(errors="replace"))

        def refused_or_exited() -> bool:
            return any("ConnectionRefusedError" in ln for ln in lines) or proc.returncode is not None

        reader = asyncio.create_task(drain())
        cs = CentralSystem("127.0.0.1", port, response_timeout=2.0)
        try:
            await settle(refused_or_exited, timeout=15, what="the fleet's first failed connection attempt")
            assert proc.returncode is None, "".join(lines)
            await cs.start()
            await settle(lambda: len(cs.online_ids()) == 3, timeout=15, what="3 charge points online")
            assert sorted(cs.online_ids()) == ["CP0001", "CP0002", "CP0003"]
            await cs.stop()
            cs = CentralSystem("127.0.0.1", port, response_timeout=2.0)
            await cs.start()
            # They reconnect without a BootNotification (a network loss, not a reboot): connected again, not
            # "online" to a central system that never saw them boot.
            await settle(lambda: len(cs.connected_ids()) == 3, timeout=15, what="3 charge points reconnected")
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0, "".join(lines)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await asyncio.wait_for(reader, 5)
            if cs.running:
                await cs.stop()
        assert "Traceback" not in "".join(lines)
        # One line for the outage as a whole, not one per charger (or per attempt) at the default level.
        assert sum("could not connect" in ln for ln in lines) == 1, "".join(lines)
    run(body, timeout=45)
