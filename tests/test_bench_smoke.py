"""``coordinator bench`` keeps working (figures are printed, never asserted: timing is not a test)."""

from __future__ import annotations

import io

import pytest

from runtime.bench import run_bench


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("no_leaks")
def test_quick_bench_prints_every_figure_line():
    out = io.StringIO()
    assert run_bench(quick=True, only=["schedule", "throughput", "startup"], out=out) == 0
    text = out.getvalue()
    for part in ("schedule", "ceiling", "throughput", "startup"):
        assert any(line.startswith(part) for line in text.splitlines()), text
    assert "every command COMPLETED" in text and "MISS: every command COMPLETED" not in text


def test_unknown_bench_part_is_refused_by_name():
    out = io.StringIO()
    assert run_bench(quick=True, only=["nope"], out=out) == 2
    assert "unknown bench part 'nope'" in out.getvalue()


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("no_leaks")
def test_quick_journal_bench_prints_its_figures_and_verdicts():
    out = io.StringIO()
    assert run_bench(quick=True, only=["journal"], out=out) == 0
    text = out.getvalue()
    assert text.startswith("journal") and "bytes_per_command=" in text and "restart at day 3" in text


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("no_leaks")
def test_quick_ocpp_bench_times_both_sides_and_stops_everything():
    out = io.StringIO()
    assert run_bench(quick=True, only=["ocpp"], out=out) == 0
    line = out.getvalue().splitlines()[0]
    assert line.startswith("ocpp single") and "ours_p99_ms=" in line and "bare_p99_ms=" in line
    samples = int(line.split("samples=")[1].split()[0])
    assert samples >= 50


def test_a_part_run_with_the_site_process_settings_leaves_the_interpreter_as_it_found_it():
    import gc
    import sys

    from runtime.bench.interpreter import interpreter
    from runtime.service.process import SWITCH_INTERVAL_S

    before = sys.getswitchinterval()
    with interpreter(True) as setting:
        assert sys.getswitchinterval() == SWITCH_INTERVAL_S != before
        assert gc.get_freeze_count() > 0
        assert setting.startswith("site process")
    assert sys.getswitchinterval() == before and gc.get_freeze_count() == 0
    with interpreter(False) as setting:
        assert setting.startswith("default") and sys.getswitchinterval() == before


def test_thread_cpu_counts_each_kind_of_thread_by_its_name_without_the_number():
    import threading

    from runtime.bench.thread_cpu import ThreadCpu

    burned, hold = threading.Event(), threading.Event()

    def burn() -> None:
        sum(i * i for i in range(300_000))
        burned.set()
        hold.wait(5)

    cpu = ThreadCpu()
    cpu.start()
    threads = [threading.Thread(target=burn, name=f"Burner-{k}") for k in (7, 8)]
    for t in threads:
        t.start()
    try:
        assert burned.wait(5)
        cpu.stop()
    finally:
        hold.set()
        for t in threads:
            t.join(5)
    split = cpu.per(1, top=1)
    assert list(split) == ["Burner", "other"] or list(split) == ["Burner"], split
    assert split["Burner"] > 1000.0   # microseconds: the squares above take far more than 1 ms
    assert cpu.per(0) == {}
