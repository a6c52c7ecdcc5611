"""The site process fixes glibc's mmap threshold (runtime/service/allocator.py): a large buffer is mapped on its
own even after a larger one was freed, where glibc's default would take it from the heap. Each case runs in an
interpreter of its own, as the setting is process-wide and cannot be undone, with no allocator variables in its
environment."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
import sysconfig
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
if sys.argv[1] == "fix":
    from runtime.service.allocator import fix_mmap_threshold   # imports nothing that allocates much
    assert fix_mmap_threshold()
freed = bytearray(4 << 20)
del freed                    # a mapped buffer freed: glibc's default raises its threshold to 4 MiB
before = libc.mallinfo2().hblkhd
kept = bytearray(1 << 20)
print(libc.mallinfo2().hblkhd - before)   # bytes newly mapped for the 1 MiB buffer
"""


def _glibc_with_mallinfo2() -> bool:
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    return hasattr(ctypes.CDLL(None), "mallinfo2")   # glibc 2.33 and later


pytestmark = pytest.mark.skipif(
    not _glibc_with_mallinfo2() or bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    or os.environ.get("PYTHONMALLOC", "").startswith("mimalloc"),
    reason="glibc's allocator (2.33+) under CPython's own object allocator only")


def _run(code: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD", "PYTHONMALLOC")}
    res = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True, env=env)
    return res.stdout.strip()


def test_by_default_a_large_buffer_comes_from_the_heap_once_a_larger_one_was_freed() -> None:
    assert int(_run(_PROBE, "default")) == 0


def test_fixed_threshold_maps_a_large_buffer_on_its_own_whatever_was_freed_before() -> None:
    assert int(_run(_PROBE, "fix")) >= 1 << 20


def test_the_site_process_settings_fix_the_threshold() -> None:
    code = ("from runtime.service.process import tune_interpreter; "
            "print(tune_interpreter(switch_interval_s=None, freeze=False).get('mmap_threshold_bytes'))")
    assert _run(code) == str(128 * 1024)
