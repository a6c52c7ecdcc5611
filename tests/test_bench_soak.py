"""``coordinator bench soak`` as a user runs it (a real process), small and short: 20 chargers, 2 batteries,
15 s. Its figures are printed, not asserted: the test checks that both command paths carried commands to the
end, that faults were injected and answered, and that the report says nothing leaked. No timing assertions;
every wait is bounded."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.bench.report import LogHistogram
from runtime.bench.soak import _first_after, _growth_pct_per_h

ROOT = Path(__file__).resolve().parents[1]
CLI = (sys.executable, "-m", "runtime.cli", "bench", "soak")


def figure(text: str, key: str) -> str:
    m = re.search(rf"(?:^|\s){key}=(\S+)", text)
    assert m, f"no {key}= in the report:\n{text}"
    return m.group(1)


@pytest.mark.timeout(120)
def test_a_short_soak_carries_site_and_cloud_commands_and_leaks_nothing() -> None:
    res = subprocess.run([*CLI, "--minutes", "0.25", "--chargers", "20", "--batteries", "2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=110, stdin=subprocess.DEVNULL, check=False)
    out = res.stdout
    assert res.returncode == 0, (out, res.stderr[-3000:])
    assert "Traceback" not in res.stderr + out
    progress = [line for line in out.splitlines() if line.startswith("soak ") and "t_min=" in line]
    assert progress, out
    total = next(line for line in out.splitlines() if line.startswith("soak total"))
    assert int(figure(total, "site_completed")) > 0
    assert int(figure(total, "cloud_executed")) > 0
    assert int(figure(total, "steps")) >= 1
    assert int(figure(total, "py_blocks_end")) > 100_000   # this interpreter, with the site loaded, holds more
    if sys.platform == "linux" and platform.libc_ver()[0] == "glibc":
        assert figure(total, "mmap_threshold_fixed") == "True"   # as coordinator run does
    for key in ("leaked_threads", "leaked_tasks", "leaked_fds", "leaked_sockets", "leaked_children"):
        assert figure(total, key) == "0", total
    assert figure(total, "control_errors") == "0", total
    assert "faults={'" in total, total   # at least one fault was injected
    assert "interrupted=False" in total
    assert "[ok: ran to the end]" in out and "[ok: nothing leaked]" in out
    assert "[ok: site commands COMPLETED]" in out and "[ok: cloud commands EXECUTED]" in out


@pytest.mark.parametrize("args, why", [
    (("--minutes", "0"), "--minutes"),
    (("--minutes", "-1"), "--minutes"),
    (("--minutes", "soon"), "--minutes"),
    (("--minutes", "inf"), "--minutes"),
    (("--minutes", "1", "--chargers", "0"), "--chargers"),
    (("--minutes", "1", "--batteries", "0"), "--batteries"),
    (("--minutes", "1", "--chargers", "many"), "--chargers"),
    (("--minutes", "1", "--cloud-rate", "0"), "--cloud-rate"),
    (("--minutes", "1", "--router-restart-min", "-1"), "--router-restart-min"),
    ((), "--minutes"),
])
def test_bad_input_exits_2_with_a_clear_message(args: tuple[str, ...], why: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["bench", "soak", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert why in err.strip().splitlines()[-1], err


def test_bad_input_exits_2_as_a_process_too() -> None:
    res = subprocess.run([*CLI, "--minutes", "0", "--chargers", "20"], cwd=ROOT, capture_output=True, text=True,
                         timeout=30, stdin=subprocess.DEVNULL, check=False)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    assert res.stderr.strip().splitlines()[-1] == ("coordinator bench soak: error: argument --minutes: 0 is not a "
                                                   "finite number > 0"), res.stderr


def test_growth_is_the_least_squares_slope_after_the_warm_up() -> None:
    flat = [(t, 100.0) for t in range(0, 600, 5)]
    assert _growth_pct_per_h(flat, 60) == 0.0
    # 1 MB per minute on 100 MB after the warm-up: 60 %/h; what the warm-up did is not counted
    rising = [(t, 50.0 + t) for t in range(0, 60, 5)] + [(t, 100.0 + (t - 60) / 60) for t in range(60, 600, 5)]
    assert _growth_pct_per_h(rising, 60) == pytest.approx(60.0, rel=1e-6)
    assert _growth_pct_per_h(flat[:2], 0) is None
    assert _first_after(rising, 60) == 100 and _first_after(rising, 600) is None


def test_histogram_percentiles_are_within_two_percent() -> None:
    h = LogHistogram()
    values = [0.001 * i for i in range(1, 1001)]
    for v in values:
        h.add(v)
    for q, exact in ((0.5, 0.5), (0.99, 0.99), (1.0, 1.0)):
        got = h.percentile(q)
        assert got is not None and exact <= got * 1.0001 and got <= exact * 1.02, (q, got)
    assert LogHistogram().percentile(0.99) is None


def test_a_soak_without_router_restarts_is_a_valid_option() -> None:
    from runtime.bench.soak import SoakOptions
    SoakOptions(minutes=1, router_restart_s=None).check()
    with pytest.raises(ValueError, match="router_restart_s: must be > 0, got 0"):
        SoakOptions(minutes=1, router_restart_s=0.0).check()
