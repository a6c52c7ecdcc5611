"""The watched folder: schedule files (CSV or Parquet) dropped into ``[sources.folder] path`` are submitted.

Every ``poll_s`` the folder is listed. A ``*.csv`` or ``*.parquet`` file (not a hidden one, not in a
sub-folder) is taken once its size and modification time are the same over two polls in a row, so a
file still being written is never read half-way. Writers should still write to a temporary name (one
that does not end in .csv/.parquet, e.g. ``plan.csv.tmp``, or a hidden ``.plan.csv``) and rename it
when complete: a rename within one filesystem is atomic, and a writer that pauses longer than
``poll_s`` would otherwise be taken early.

A file that is taken is read and checked (:mod:`runtime.service.schedule_files`), then submitted as one
batch through :meth:`SiteGateway.submit_schedule` with the folder's ``asset_map`` and ``batch_id`` = the
file's stem, so a file dropped again under the same name is a no-op (give a new schedule a new name).
It then moves to ``path/done/``, or, refused, to ``path/failed/`` beside ``<name>.error``: one line per
problem (a bad cell names its CSV line number and column, an unknown asset names it). A name already
taken in done/ or failed/ gets a numeric suffix, so nothing is overwritten. When the site does not
answer (stopping, or too slow), the file stays where it is and is tried again at the next poll.

Threads and loops: the polling task runs on the site's I/O loop; listing, reading, parsing, writing
the .error file and moving run in the loop's default executor, so the loop is never blocked for long.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from runtime.config.models import FolderSourceConfig, SiteConfig
from runtime.core.errors import ScheduleError, SiteNotRunning, UnknownAsset
from runtime.site import Site

from .gateway import SiteGateway
from .metrics import SiteMetrics, site_metrics
from .schedule_files import SCHEDULE_SUFFIXES, read_schedule_file

log = logging.getLogger(__name__)

__all__ = ["FolderWatcher", "folder_component", "TakenFile"]

#: How long stop() waits for the polling task to end after cancelling it.
STOP_TIMEOUT_S = 10.0

Signature = tuple[int, int]  # (size, mtime in ns)


@dataclass(frozen=True)
class TakenFile:
    """What became of one file: ``outcome`` "done" or "failed", where it is now, the batch id and the
    number of commands (done), or the problems (failed)."""

    name: str
    outcome: str
    moved_to: Path
    batch_id: str | None = None
    commands: int = 0
    problems: tuple[str, ...] = ()


class FolderWatcher:
    """The watched folder as a :class:`~runtime.service.process.Component` (see the module docstring).
    :meth:`start`, :meth:`stop` and :meth:`poll_once` are coroutines for the site's I/O loop."""

    name = "folder"

    def __init__(self, site: Site, config: FolderSourceConfig, *, gateway: SiteGateway | None = None,
                 metrics: SiteMetrics | None = None) -> None:
        self.site = site
        self.config = config
        self.path = Path(config.path)
        self.done_dir = self.path / "done"
        self.failed_dir = self.path / "failed"
        self.gateway = gateway or SiteGateway(site)
        self.metrics = metrics or site_metrics(site)
        self._last: dict[str, Signature] = {}  # what the previous poll saw (name -> signature)
        self._lock = asyncio.Lock()            # one poll at a time (the task's and a caller's)
        self._task: asyncio.Task[None] | None = None
        self.taken: list[TakenFile] = []       # every file taken, in order (for tests and diagnostics)

    async def start(self) -> None:
        """Create the folder, done/ and failed/ if missing, and start polling (the first poll at once)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._make_dirs)
        self._task = loop.create_task(self._run(), name=f"folder {self.path}")
        log.info("watching %s for schedules every %g s", self.path, self.config.poll_s)

    async def stop(self) -> None:
        """Cancel the polling task and wait for it (bounded). A file being read is read again next time."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=STOP_TIMEOUT_S)
        if not done:
            log.warning("the folder task for %s did not stop within %g s", self.path, STOP_TIMEOUT_S)

    def _make_dirs(self) -> None:
        for d in (self.path, self.done_dir, self.failed_dir):
            d.mkdir(parents=True, exist_ok=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a folder that vanished, a disk error: say so, keep polling
                log.exception("polling %s failed", self.path)
            await asyncio.sleep(self.config.poll_s)

    async def poll_once(self) -> list[TakenFile]:
        """List the folder once; take every schedule file that has not changed since the previous poll."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            seen = await loop.run_in_executor(None, self._scan)
            stable = sorted(name for name, sig in seen.items() if self._last.get(name) == sig)
            self._last = seen
            results = []
            for name in stable:
                result = await self._take(name)
                if result is not None:
                    self._last.pop(name, None)
                    self.taken.append(result)
                    results.append(result)
            return results

    def _scan(self) -> dict[str, Signature]:
        """(executor) name -> (size, mtime_ns) of every schedule file directly in the folder (done/ and
        failed/ are made again first if someone removed them)."""
        self._make_dirs()
        found: dict[str, Signature] = {}
        with os.scandir(self.path) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or not name.lower().endswith(SCHEDULE_SUFFIXES):
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                found[name] = (st.st_size, st.st_mtime_ns)
        return found

    async def _take(self, name: str) -> TakenFile | None:
        """Read, check, submit and move one file; None when it is to be tried again at the next poll."""
        loop = asyncio.get_running_loop()
        path = self.path / name
        try:
            parsed = await loop.run_in_executor(None, lambda: read_schedule_file(
                path, timezone_name=self.config.timezone, asset_map=self.config.asset_map,
                asset_ids=self.site.asset_ids))
        except FileNotFoundError:  # taken away meanwhile
            return None
        if parsed.problems:
            return await self._refuse(name, parsed.problems)
        assert parsed.frame is not None
        batch_id = Path(name).stem
        try:
            batch = await self.gateway.submit_schedule(parsed.frame, self.config.asset_map, batch_id=batch_id)
        except (ScheduleError, UnknownAsset, ValueError) as exc:
            return await self._refuse(name, [str(exc)])
        except (SiteNotRunning, TimeoutError) as exc:
            log.warning("%s: not submitted (%s); tried again at the next poll", path,
                        exc or "the site did not answer in time")
            return None
        moved = await loop.run_in_executor(None, self._move, name, self.done_dir)
        self.metrics.folder_files.labels("done").inc()
        log.info("%s: submitted as batch %s (%d commands for %s); moved to %s", path, batch_id, len(batch),
                 ", ".join(batch.assets), moved)
        return TakenFile(name, "done", moved, batch_id=batch_id, commands=len(batch))

    async def _refuse(self, name: str, problems: list[str]) -> TakenFile:
        loop = asyncio.get_running_loop()
        moved = await loop.run_in_executor(None, self._move_failed, name, problems)
        self.metrics.folder_files.labels("failed").inc()
        log.warning("%s: refused (%s%s); moved to %s, see %s.error", self.path / name, problems[0],
                    f", and {len(problems) - 1} more problem(s)" if len(problems) > 1 else "", moved, moved.name)
        return TakenFile(name, "failed", moved, problems=tuple(problems))

    def _move_failed(self, name: str, problems: list[str]) -> Path:
        """(executor) The .error file first, then the file: a crash in between leaves the file to be
        taken again, never a refused file without its reason."""
        target = _free_name(self.failed_dir, name)
        error = target.with_name(target.name + ".error")
        tmp = error.with_name("." + error.name + ".tmp")
        tmp.write_text("".join(p.replace("\n", " ") + "\n" for p in problems), encoding="utf-8")
        os.replace(tmp, error)
        os.replace(self.path / name, target)
        return target

    def _move(self, name: str, directory: Path) -> Path:
        """(executor) Move a file into ``directory`` without overwriting anything there."""
        target = _free_name(directory, name)
        os.replace(self.path / name, target)
        return target


def _free_name(directory: Path, name: str) -> Path:
    """``directory/name``, or ``directory/<stem>-<n><suffix>`` when that is taken."""
    target = directory / name
    n = 1
    while target.exists() or target.with_name(target.name + ".error").exists():
        p = Path(name)
        target = directory / f"{p.stem}-{n}{p.suffix}"
        n += 1
    return target


def folder_component(site: Site, config: SiteConfig) -> FolderWatcher | None:
    """The watched folder of a site process, or None when ``[sources.folder]`` is not configured."""
    folder = config.sources.folder
    if folder is None:
        return None
    return FolderWatcher(site, folder)
