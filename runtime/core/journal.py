"""An append-only msgpack journal with per-record CRCs and torn-tail recovery.

Every command state change and every event the runtime produces is appended here, so that a
:class:`~runtime.site.Site` restarted on the same file can recover (see :mod:`runtime.core.recovery`).

File format
-----------
* An 8-byte file header :data:`MAGIC` (``b"QEJRNL"`` + format version ``b"\\x00\\x01"``). It makes a
  journal recognisable, so opening the wrong path (a config file, say) raises
  :class:`JournalCorrupt` instead of "repairing" that file by truncating it.
* Then records, back to back. Each record is::

      <u32 little-endian payload length> <u32 little-endian CRC32 of the payload> <payload>

  The payload is one msgpack map (packed with ``use_bin_type=True``, read with ``raw=False``).
  Only dicts can be appended; keys should be strings (others are read back, but stay plain msgpack).

Durability (the ``fsync`` argument)
-----------------------------------
Every ``append``/``append_many`` goes straight to the OS with one ``write`` call (no user-space
buffer), so a *process* crash never loses an appended record in any mode. What differs is what
survives a power cut or kernel crash:

* ``"always"``: ``os.fsync`` after every append. An append that has returned is on stable storage.
  Slowest (one fsync per call: use ``append_many`` to group records).
* ``"batch"`` (default): ``os.fsync`` on :meth:`Journal.sync` / :meth:`Journal.flush` and on
  :meth:`Journal.close`, only if something was appended since the last one. Everything appended
  before the last ``sync()`` returned is on stable storage; later records may be lost (whole records
  from the end, or a torn last record, which the reader drops). The owner calls ``sync()`` after each
  batch of appends and *before* it acknowledges them to anyone.
* ``"never"``: the journal never calls fsync (``sync()`` and ``close()`` do not either); the OS writes
  pages back when it likes. Any suffix of recent records can be lost on power loss. For tests,
  simulations and scenarios.

When the file is created, its directory is fsynced too (unless ``"never"``), so the file's existence
is as durable as its first records.

Reading and damage
------------------
:meth:`Journal.read` yields the records in order. A damaged record is one with a short header, a
payload shorter than its header says, a zero length, a CRC mismatch, or a payload that is not a
single msgpack map.

* A damaged record at the END of the file (nothing valid after it) is what a crash in the middle of
  a write leaves behind. It is logged with ``logging.warning`` (file, byte offset, why) and skipped.
  Opening the file for append (:class:`Journal`) additionally truncates the file back to the end of
  the last good record, so new records follow good ones and the journal stays valid.
* A damaged record followed by at least one valid record (found by scanning forward byte by byte,
  because a corrupt length field hides where the next record starts) is corruption in the MIDDLE.
  That is never skipped silently: both reading and opening raise :class:`JournalCorrupt` naming the
  path and the offset, and nothing is truncated. Skipping would drop records that were acknowledged
  (accepted commands lost or, worse, their final states lost and the commands applied twice);
  truncating would throw away every good record after the damage. A person has to look. Records
  before the damage have already been yielded when ``read`` raises. (One crash pattern ends up here
  too: a filesystem that persisted a later page of an un-fsynced write but not an earlier one. That
  cannot be told apart from real corruption, so it is treated as such.) There is no non-strict mode.

Compaction
----------
:meth:`Journal.compact` atomically replaces a journal with a given set of records: temp file in the
same directory, fsync, ``os.replace``, fsync of the directory. Readers see the old file or the new
one, never a mix. Close any :class:`Journal` open on that path first and reopen it afterwards: an
open instance keeps appending to the old (replaced) file.

Threading
---------
A :class:`Journal` instance belongs to exactly one thread - in the runtime, the actor that owns it
(the dispatcher). It has no locks; it holds no module-level mutable state, so several journals
(different files) can be used from different threads. ``read``/``compact`` are static and safe
anywhere, but read a file while someone appends to it only if you accept a torn-looking last record.

Out of scope: size limits, segment rotation and retention. A long-running site keeps the file small
by compacting it (e.g. to the non-final commands plus live batches) at start-up or on a schedule.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import tempfile
import zlib
from datetime import datetime
from enum import Enum
from typing import Any, Iterable, Iterator, Literal

import msgpack

from .errors import ConfigurationError, JournalCorrupt

log = logging.getLogger(__name__)

__all__ = ["Journal", "JournalCorrupt", "FsyncPolicy", "MAGIC"]

FsyncPolicy = Literal["always", "batch", "never"]
_POLICIES = ("always", "batch", "never")

#: File header: format name + version.
MAGIC = b"QEJRNL\x00\x01"
_HEADER = struct.Struct("<II")  # payload length, CRC32 (immutable; safe to share)
_HSIZE = _HEADER.size
_MAX_PAYLOAD = 0xFFFFFFFF
#: First byte of a msgpack map (fixmap, map16, map32): where a valid payload can start.
_MAP_START = re.compile(rb"[\x80-\x8f\xde\xdf]")
_COMPACT_CHUNK = 1 << 20



def _decode(payload: bytes) -> tuple[dict[str, Any] | None, str | None]:
    try:
        rec = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types (ExtraData, ValueError, FormatError, ...)
        return None, f"undecodable msgpack ({type(exc).__name__}: {exc})"
    if not isinstance(rec, dict):
        return None, f"payload is a {type(rec).__name__}, not a map"
    return rec, None


def _frame_at(buf: bytes, pos: int) -> int | None:
    """End offset (in ``buf``) of a valid record starting at ``pos``, or None."""
    if len(buf) - pos < _HSIZE:
        return None
    n, crc = _HEADER.unpack_from(buf, pos)
    end = pos + _HSIZE + n
    if n == 0 or end > len(buf):
        return None
    payload = buf[pos + _HSIZE:end]
    if zlib.crc32(payload) != crc:
        return None
    return end if _decode(payload)[1] is None else None


def _next_valid_frame(buf: bytes, start: int) -> int | None:
    """Offset (in ``buf``) of the first valid record at or after ``start``, or None."""
    for m in _MAP_START.finditer(buf, start + _HSIZE):
        if _frame_at(buf, m.start() - _HSIZE) is not None:
            return m.start() - _HSIZE
    return None


def _pack_record(packer: msgpack.Packer, record: dict[str, Any]) -> bytes:
    if not isinstance(record, dict):
        raise TypeError(f"journal records must be dicts, got {type(record).__name__}")
    payload = packer.pack(record)
    if len(payload) > _MAX_PAYLOAD:
        raise ValueError(f"journal record too large ({len(payload)} bytes; limit {_MAX_PAYLOAD})")
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _plain(value: Any) -> Any:
    """msgpack ``default`` hook for what msgpack cannot pack itself: datetimes as ISO strings, enums
    by value (str/int enums are packed as their value already), tuples and sets as lists. Anything
    else is refused with TypeError: a record must not silently change meaning on its way to disk."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"journal records cannot hold {type(value).__name__} values ({value!r})")


def _new_packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True, default=_plain)


def _fsync_dir(directory: str) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(directory or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Scan:
    """Result of scanning a journal file: where the good part ends and what was wrong after it."""

    __slots__ = ("good_end", "size", "damage", "needs_header")

    def __init__(self) -> None:
        self.good_end = 0
        self.size = 0
        self.damage: str | None = None
        self.needs_header = False


def _scan(path: str, result: _Scan, decode: bool = True) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """Yield ``(offset, record)`` for every good record; fill ``result``; raise on middle damage.

    With ``decode=False`` (opening for append) only the last record is decoded, the others are
    checked by length and CRC and yielded as ``None``: a record with a good CRC was written whole,
    so only the last one can be a torn-looking leftover worth decoding; the rest costs msgpack
    decoding time for nothing at start-up. ``read`` decodes everything."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        result.size = size
        if size == 0:
            result.needs_header = True
            return
        head = f.read(len(MAGIC))
        if head != MAGIC:
            if len(head) < len(MAGIC) and MAGIC.startswith(head):
                result.needs_header = True
                result.damage = f"torn file header ({len(head)} of {len(MAGIC)} bytes)"
                log.warning("journal %s: %s at byte offset 0; treating the journal as empty",
                            path, result.damage)
                return
            raise JournalCorrupt(path, 0, f"not a journal file (header {head!r}, expected {MAGIC!r})")
        off = len(MAGIC)
        result.good_end = off
        read = f.read
        while off < size:
            header = read(_HSIZE)
            reason: str | None = None
            rec: dict[str, Any] | None = None
            if len(header) < _HSIZE:
                reason = f"truncated header ({len(header)} of {_HSIZE} bytes)"
            else:
                n, crc = _HEADER.unpack(header)
                end = off + _HSIZE + n
                if n == 0:
                    reason = "zero-length record"
                elif end > size:
                    reason = f"truncated payload ({size - off - _HSIZE} of {n} bytes)"
                else:
                    payload = read(n)
                    if len(payload) < n:  # file shrank under us
                        reason = f"truncated payload ({len(payload)} of {n} bytes)"
                    elif zlib.crc32(payload) != crc:
                        reason = f"CRC mismatch (stored {crc:#010x}, computed {zlib.crc32(payload):#010x})"
                    elif decode or end == size:
                        rec, reason = _decode(payload)
            if reason is None:
                yield off, rec
                off = end
                result.good_end = off
                continue
            # Damaged record at `off`: a torn tail, unless a valid record follows somewhere.
            f.seek(off)
            rest = f.read()
            nxt = _next_valid_frame(rest, 1)
            if nxt is not None:
                raise JournalCorrupt(path, off, f"{reason}; a valid record follows at byte offset {off + nxt}")
            result.damage = reason
            log.warning("journal %s: torn last record at byte offset %d (%s); skipping %d trailing bytes",
                        path, off, reason, size - off)
            return


class Journal:
    """An open journal file, appending after its last good record. See the module docstring.

    ``Journal(path, fsync="batch")`` creates the file if needed, validates an existing one (framing
    and CRC of every record, msgpack of the last one; :class:`JournalCorrupt` on damage before the
    end) and truncates a torn last record away.
    Attributes: ``path``, ``fsync`` (the policy), ``size`` (bytes, = offset of the next record),
    ``truncated_bytes`` (how much a torn tail cost at open), ``records_at_open``.
    """

    def __init__(self, path: str | os.PathLike[str], fsync: FsyncPolicy = "batch") -> None:
        if fsync not in _POLICIES:
            raise ConfigurationError(f"fsync: must be one of {', '.join(_POLICIES)}, got {fsync!r}")
        self.path = os.fspath(path)
        self.fsync: FsyncPolicy = fsync
        self._packer = _new_packer()
        self._dirty = False
        self.truncated_bytes = 0
        self.records_at_open = 0

        created = not os.path.exists(self.path)
        scan = _Scan()
        if created:
            scan.needs_header = True
        else:
            for _ in _scan(self.path, scan, decode=False):
                self.records_at_open += 1
        self._f = open(self.path, "ab", buffering=0)
        try:
            if scan.good_end < scan.size:
                self.truncated_bytes = scan.size - scan.good_end
                os.ftruncate(self._f.fileno(), scan.good_end)
                self._durable()
            self.size = scan.good_end
            if scan.needs_header:
                self._write(MAGIC)
                self._durable()
            if created and fsync != "never":
                _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        except BaseException:
            self._f.close()
            raise

    # -- writing --------------------------------------------------------------------------------

    def append(self, record: dict[str, Any]) -> None:
        """Append one record (a dict of msgpack-able values)."""
        self._check_open()
        self._write(_pack_record(self._packer, record))
        self._after_append()

    def append_many(self, records: Iterable[dict[str, Any]]) -> None:
        """Append several records with a single write call (one fsync in ``"always"`` mode).

        All records are packed first: if one cannot be packed, nothing is written.
        """
        self._check_open()
        packer = self._packer
        pack = packer.pack
        hpack = _HEADER.pack
        crc32 = zlib.crc32
        buf = bytearray()
        for record in records:
            if not isinstance(record, dict):
                raise TypeError(f"journal records must be dicts, got {type(record).__name__}")
            payload = pack(record)
            if len(payload) > _MAX_PAYLOAD:
                raise ValueError(f"journal record too large ({len(payload)} bytes; limit {_MAX_PAYLOAD})")
            buf += hpack(len(payload), crc32(payload))
            buf += payload
        if buf:
            self._write(buf)
            self._after_append()

    def sync(self) -> None:
        """Apply the fsync policy at a batch boundary: ``"batch"`` fsyncs if anything was appended
        since the last sync; ``"always"`` has nothing left to do; ``"never"`` does nothing."""
        self._check_open()
        if self._dirty and self.fsync == "batch":
            os.fsync(self._f.fileno())
        self._dirty = False

    flush = sync

    def close(self) -> None:
        """Sync according to the policy and close. Idempotent."""
        if self._f.closed:
            return
        try:
            if self._dirty and self.fsync == "batch":
                os.fsync(self._f.fileno())
            self._dirty = False
        finally:
            self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.size} bytes"
        return f"<Journal {self.path} fsync={self.fsync} {state}>"

    def _check_open(self) -> None:
        if self._f.closed:
            raise ValueError(f"journal {self.path} is closed")

    def _after_append(self) -> None:
        if self.fsync == "always":
            os.fsync(self._f.fileno())
        else:
            self._dirty = True

    def _durable(self) -> None:
        if self.fsync != "never":
            os.fsync(self._f.fileno())

    def _write(self, data: bytes | bytearray) -> None:
        """Write all of ``data`` at the end. On failure (e.g. disk full) cut the file back to where it
        was, so a half-written record can never end up followed by good ones; if even that fails, the
        journal is closed so that no further append can land after the fragment."""
        f = self._f
        try:
            written = f.write(data)
            if written is None or written < len(data):  # partial write: rare, but legal for raw files
                view = memoryview(data)
                written = written or 0
                while written < len(data):
                    n = f.write(view[written:])
                    if not n:
                        raise OSError(f"journal {self.path}: write made no progress")
                    written += n
        except BaseException:
            try:
                os.ftruncate(f.fileno(), self.size)
            except OSError:
                log.error("journal %s: could not truncate after a failed write; closing it", self.path)
                f.close()
            raise
        self.size += len(data)

    # -- reading and rewriting ------------------------------------------------------------------

    @staticmethod
    def read(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
        """Yield every good record in order. A torn last record is logged and skipped; damage before
        the end raises :class:`JournalCorrupt`. A missing file raises ``FileNotFoundError``; an empty
        one yields nothing."""
        for _, rec in _scan(os.fspath(path), _Scan()):
            yield rec  # type: ignore[misc]

    @staticmethod
    def read_with_offsets(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Like :meth:`read`, yielding ``(byte_offset, record)`` pairs."""
        yield from _scan(os.fspath(path), _Scan())  # type: ignore[misc]

    @staticmethod
    def compact(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> None:
        """Atomically replace the journal at ``path`` with exactly ``records``.

        Written to a temp file in the same directory, fsynced, renamed over ``path`` with
        ``os.replace`` and the directory fsynced. If anything fails, ``path`` is left as it was.
        ``records`` may be a lazy iterable (it may even read ``path`` itself). Close a
        :class:`Journal` open on ``path`` before compacting and reopen it after.
        """
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".compact", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                packer = _new_packer()
                buf = bytearray(MAGIC)
                for record in records:
                    buf += _pack_record(packer, record)
                    if len(buf) >= _COMPACT_CHUNK:
                        f.write(buf)
                        buf.clear()
                f.write(buf)
                f.flush()
                os.fsync(f.fileno())
            try:  # mkstemp makes 0600 files: keep the mode the journal had
                os.chmod(tmp, os.stat(path).st_mode & 0o7777)
            except OSError:
                pass
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_dir(directory)

