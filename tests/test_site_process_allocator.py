"""The site process fixes glibc's mmap threshold (runtime/service/process.py): a large buffer is mapped on its
own even after a larger one was freed, where glibc's default would take it from the heap. Each case runs in an
interpreter of its own, as the setting is process-wide and cannot be undone."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import ctypes, sys
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "site":
    from runtime.service.process import tune_interpreter
    print(tune_interpreter(switch_interval_s=None, freeze=False).get("mmap_threshold_bytes"))
else:
    print(None)
freed = bytearray(4 << 20)
del freed                    # a mapped buffer freed: glibc's default raises its threshold to 4 MiB
before = libc.mallinfo2().hblkhd
kept = bytearray(1 << 20)
print(libc.mallinfo2().hblkhd - before)   # bytes newly mapped for the 1 MiB buffer
"""

pytestmark = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's allocator only")


def _probe(mode: str) -> tuple[str, int]:
    res = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    setting, mapped = res.stdout.split()
    return setting, int(mapped)


def test_by_default_a_large_buffer_comes_from_the_heap_once_a_larger_one_was_freed() -> None:
    assert _probe("default") == ("None", 0)


def test_the_site_process_maps_large_buffers_on_their_own_whatever_was_freed_before() -> None:
    setting, mapped = _probe("site")
    assert setting == str(128 * 1024)
    assert mapped >= 1 << 20
