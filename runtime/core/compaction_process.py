"""Compaction in a child process, so that the site's own heap never holds the decoded journal.

Compacting an 8 MiB command journal decodes it into Python objects: a peak of 100-200 MB. Done in a
thread of the site, that peak stays in the site's RSS afterwards (CPython's allocator cannot give back
arenas that the site's other threads allocated long-lived objects into meanwhile), and it grows at each
compaction: a site of 550 in-memory batteries went from 137 MB to 618 MB in five compactions of 8 MiB
(the README's Performance section). The thread also holds the GIL for the decode, so the dispatcher waits
behind it.

:func:`compact_in_child` runs the same procedure (:func:`~runtime.core.compaction.compact_stream`,
reading the sealed files) in ``python -m runtime.core.compaction_process``: the child exits when it is
done, and its memory goes back to the system with it. It changes nothing of the procedure's safety: the
child is one more writer of the same crash-safe steps, and killing it (at shutdown, see ``should_stop``)
is as safe as a crash at that step. The start-up compaction, which reuses the state recovery already read,
stays in a thread (:class:`~runtime.core.command_log.CommandLog`).

The child gets its arguments as JSON on its command line and prints its result as one JSON line; its
log records go to its stderr, which the caller logs when the child fails.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from .compaction import CompactionResult, CompactionSummary, compact_stream
from .segments import StreamDir

__all__ = ["compact_in_child", "ChildCompactionError", "CompactionAbandoned"]

#: How often the caller checks ``should_stop`` while the child runs (seconds).
POLL_S = 0.1
#: The folder that holds the ``runtime`` package: the child imports the same code as its parent.
_CODE_ROOT = str(Path(__file__).resolve().parents[2])


class ChildCompactionError(RuntimeError):
    """The child failed (exit status and the end of its stderr in the message); the journal is still valid."""


class CompactionAbandoned(Exception):
    """``should_stop`` turned true and the child was killed (the layout stays valid, as after a crash)."""


def compact_in_child(stream: StreamDir, upto: int, now: float, *, retention_s: float,
                     dedupe_window_s: float | None, durable: bool = True,
                     should_stop: Callable[[], bool] = lambda: False) -> CompactionResult:
    """Compact ``stream`` up to sealed log ``upto`` in a child process; same arguments and result as
    :func:`~runtime.core.compaction.compact_stream` (without ``state`` and ``step``). Blocks the calling
    thread (a background thread of the caller) until the child ends; kills it when ``should_stop()``."""
    args = {"directory": stream.directory, "name": stream.name, "upto": upto, "now": now,
            "retention_s": retention_s, "dedupe_window_s": dedupe_window_s, "durable": durable}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_CODE_ROOT, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen([sys.executable, "-m", __name__, json.dumps(args)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        while True:
            try:
                out, err = proc.communicate(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                if should_stop():
                    raise CompactionAbandoned(f"compaction of {stream.active_path} stopped") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if proc.returncode != 0:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise ChildCompactionError(f"compaction process exited with status {proc.returncode}: "
                                   + (" | ".join(tail) or "no output"))
    try:
        data = json.loads(out.decode("utf-8").strip().splitlines()[-1])
        summary = CompactionSummary(**data.pop("summary"))
        return CompactionResult(summary=summary, **data)
    except (ValueError, IndexError, TypeError, KeyError) as exc:
        raise ChildCompactionError(f"compaction process printed no valid result: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    """The child: ``python -m runtime.core.compaction_process '<json arguments>'``."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    args: dict[str, Any] = json.loads((sys.argv[1:] if argv is None else argv)[0])
    stream = StreamDir(args["directory"], args["name"])
    result = compact_stream(stream, int(args["upto"]), float(args["now"]), retention_s=float(args["retention_s"]),
                            dedupe_window_s=args["dedupe_window_s"], durable=bool(args["durable"]))
    sys.stdout.write(json.dumps(asdict(result)) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
