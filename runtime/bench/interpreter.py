"""The interpreter a benchmark part runs under: as an embedded Site finds it, or as the site process sets it.

``coordinator run`` applies :func:`runtime.service.process.tune_interpreter` once its site has started
(a longer GIL switch interval, ``gc.freeze()``, a fixed mmap threshold in glibc's allocator); an embedded
:class:`~runtime.site.Site` never touches the interpreter. Parts that print both (throughput, fleet) enter
:func:`interpreter` around the measured part, after the site started, so that the frozen objects are the
site's, as in the site process. The mmap threshold is left alone here: it cannot be set back, and would
change every part run after it.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from typing import Iterator

__all__ = ["interpreter"]


@contextlib.contextmanager
def interpreter(tuned: bool) -> Iterator[str]:
    """Yield a label of the setting; with ``tuned``, apply the site process's settings, then restore the switch
    interval and unfreeze the collector (process-wide; ``gc.unfreeze`` releases every frozen object, so this
    is for a benchmark process that freezes nothing else)."""
    if not tuned:
        yield f"default (switch interval {sys.getswitchinterval():g} s)"
        return
    from runtime.service.process import tune_interpreter
    before = sys.getswitchinterval()
    done = tune_interpreter(mmap_threshold_bytes=None)   # that one cannot be undone for the parts that follow
    try:
        yield f"site process (switch interval {done['switch_interval_s']:g} s, gc.freeze)"
    finally:
        sys.setswitchinterval(before)
        gc.unfreeze()
