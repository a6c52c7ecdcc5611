"""The C allocator setting of the site process: glibc's mmap threshold, fixed.

glibc serves a request of at least its mmap threshold with a mapping of its own (when no free chunk of the
heap serves it), unmapped again when freed. By default the threshold starts at 128 KiB and rises, up to
32 MiB, to the size of each such mapped buffer that is freed; later buffers of that size then come from the
heap and, freed, leave gaps in it that the next, slightly larger one does not fit. A long-running site frees
and allocates such buffers all the time (the tables of big dicts and lists, large frames): in the soak its RSS
kept rising in steps of the heap while the interpreter's own allocated blocks were flat.
:func:`fix_mmap_threshold` sets the threshold (``mallopt(M_MMAP_THRESHOLD)``), which also stops glibc from
raising it. This module imports nothing but ``sys`` and ``ctypes`` (lazily), so that a process can fix the
threshold before it allocates much.
"""

from __future__ import annotations

import sys

__all__ = ["fix_mmap_threshold", "MMAP_THRESHOLD_BYTES"]

#: The threshold the site process fixes (glibc's own starting value).
MMAP_THRESHOLD_BYTES = 128 * 1024
_M_MMAP_THRESHOLD = -3   # glibc's <malloc.h>


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix the C allocator's mmap threshold at ``nbytes`` (see the module docstring). Process-wide and for good:
    no call turns glibc's raising of it on again. Call it from any thread, as early as possible. Returns False
    where the C library does not take it (not Linux, no ctypes, musl's stub)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, nbytes))
