"""An append-only msgpack journal with per-record CRCs, a versioned header and torn-tail recovery.

Every command state change and every event the runtime produces is appended to a journal, so that a
:class:`~runtime.site.Site` restarted on the same directory can recover (see :mod:`runtime.core.recovery`).
This module knows files and framing; which files make up a stream (segments, snapshots) is
:mod:`runtime.core.segments`, and what the records mean is :mod:`runtime.core.records`.

File format
-----------
* An 8-byte file header: ``b"QEJRNL"`` + the format version as a big-endian u16. Version 2
  (:data:`MAGIC`) is written; versions 1 (:data:`MAGIC_V1`, the format before headers) and 2 are read.
  The header makes a journal recognisable, so opening the wrong path (a config file, say) raises
  :class:`JournalCorrupt` instead of "repairing" that file by truncating it. A ``QEJRNL`` file of
  any other version raises :class:`JournalUnsupported` naming the version: it is a journal, written by
  a newer coordinator, and must not be read as garbage nor truncated.
* Then records, back to back. Each record is::

      <u32 little-endian payload length> <u32 little-endian CRC32 of the payload> <payload>

  The payload is one msgpack map (packed with ``use_bin_type=True``, read with ``raw=False``).
  Only dicts can be appended; keys should be strings (others are read back, but stay plain msgpack).
* Version 2: the first record is the header record :data:`HEADER_KIND` (``{"k": "hdr", "v": 2,
  "req": [...], "opt": [...], ...}``): the record kinds a reader MUST understand to use the file
  (``req``) and those it may skip (``opt``), plus free metadata (the writer, the stream, a snapshot's
  coverage). A reader refuses a file whose header requires a kind it does not know, and a record whose
  kind is neither known to it nor declared optional (:meth:`JournalHeader.check_kind`), with
  :class:`JournalUnsupported`: skipping such a record silently could drop accepted commands or the
  final state that keeps a command from being applied twice. Version 1 files have no header record;
  they hold only the kinds the version-1 writer knew (see :mod:`runtime.core.recovery`) and are
  read-only: a writer never appends to one (:class:`Journal` refuses), it starts a new file.
  :meth:`Journal.read` and friends validate header records and do not yield them.

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

When the file is created (file header and header record in one write), its directory is fsynced too
(unless ``"never"``), so the file's existence is as durable as its first records.

Reading and damage
------------------
:meth:`Journal.read` yields the records in order. A damaged record is one with a short header, a
payload shorter than its header says, a zero length, a CRC mismatch, or a payload that is not a
single msgpack map.

* A damaged record at the END of the file (nothing valid after it) is what a crash in the middle of
  a write leaves behind. It is logged with ``logging.warning`` (file, byte offset, why) and skipped.
  Opening the file for append (:class:`Journal`) additionally truncates the file back to the end of
  the last good record, so new records follow good ones and the journal stays valid. (A version-2
  file cut inside its header record is an empty journal: opening it writes the header again.)
* A damaged record followed by at least one valid record (found by scanning forward byte by byte,
  because a corrupt length field hides where the next record starts) is corruption in the MIDDLE.
  That is never skipped silently: both reading and opening raise :class:`JournalCorrupt` naming the
  path and the offset, and nothing is truncated. Skipping would drop records that were acknowledged
  (accepted commands lost or, worse, their final states lost and the commands applied twice);
  truncating would throw away every good record after the damage. A person has to look. Records
  before the damage have already been yielded when ``read`` raises. (One crash pattern ends up here
  too: a filesystem that persisted a later page of an un-fsynced write but not an earlier one. That
  cannot be told apart from real corruption, so it is treated as such.) There is no non-strict mode.

Rewriting
---------
:meth:`Journal.compact` atomically replaces (or creates) a journal with a given set of records: temp
file in the same directory, fsync, ``os.replace``, fsync of the directory. Readers see the old file or
the new one, never a mix. Close any :class:`Journal` open on that path first and reopen it afterwards:
an open instance keeps appending to the old (replaced) file. What a stream keeps when it is compacted,
and when, is :mod:`runtime.core.compaction`.

Threading
---------
A :class:`Journal` instance belongs to exactly one thread - in the runtime, the actor that owns it
(the dispatcher). It has no locks; it holds no module-level mutable state, so several journals
(different files) can be used from different threads. ``read``/``compact`` are static and safe
anywhere, but read a file while someone appends to it only if you accept a torn-looking last record.
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
from typing import Any, Callable, Iterable, Iterator, Literal

import msgpack

from .errors import ConfigurationError, JournalCorrupt, JournalError, JournalUnsupported

log = logging.getLogger(__name__)

__all__ = ["Journal", "JournalCorrupt", "JournalUnsupported", "JournalHeader", "FsyncPolicy", "MAGIC", "MAGIC_V1",
           "FORMAT_VERSION", "READABLE_VERSIONS", "HEADER_KIND", "TEMP_SUFFIX", "header_record"]

FsyncPolicy = Literal["always", "batch", "never"]
_POLICIES = ("always", "batch", "never")

#: The format name every journal file starts with, followed by its version (big-endian u16).
_NAME = b"QEJRNL"
#: The format version this module writes, and the versions it reads.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: File header of a version-2 journal (what is written) and of a version-1 journal (read only).
MAGIC = _NAME + FORMAT_VERSION.to_bytes(2, "big")
MAGIC_V1 = _NAME + (1).to_bytes(2, "big")
#: Kind of the header record that opens every version-2 file.
HEADER_KIND = "hdr"
_HEADER = struct.Struct("<II")  # payload length, CRC32 (immutable; safe to share)
_HSIZE = _HEADER.size
_MAX_PAYLOAD = 0xFFFFFFFF
#: First byte of a msgpack map (fixmap, map16, map32): where a valid payload can start.
_MAP_START = re.compile(rb"[\x80-\x8f\xde\xdf]")
_COMPACT_CHUNK = 1 << 20
#: Suffix of the temp files :meth:`Journal.compact` writes (left behind only by a crash; safe to delete).
TEMP_SUFFIX = ".tmp"



class JournalHeader:
    """What a journal file says about itself: its format ``version``, the record kinds a reader must
    know (``required``) and may skip (``optional``), and the rest of its header record (``meta``).
    A version-1 file has no header record: ``required`` and ``optional`` are None (its reader knows
    which kinds the version-1 writer wrote)."""

    __slots__ = ("path", "version", "required", "optional", "meta")

    def __init__(self, path: str, version: int, required: frozenset[str] | None = None,
                 optional: frozenset[str] | None = None, meta: dict[str, Any] | None = None) -> None:
        self.path = path
        self.version = version
        self.required = required
        self.optional = optional
        self.meta = dict(meta or {})

    @classmethod
    def from_record(cls, path: str, rec: dict[str, Any], offset: int) -> "JournalHeader":
        try:
            version = rec["v"]
            required = frozenset(str(k) for k in rec.get("req", ()))
            optional = frozenset(str(k) for k in rec.get("opt", ()))
        except (KeyError, TypeError) as exc:
            raise JournalCorrupt(path, offset, f"malformed header record ({type(exc).__name__}: {exc})") from exc
        if version != FORMAT_VERSION:
            raise JournalUnsupported(path, version, None, f"the header record says version {version!r} in a "
                                     f"version-{FORMAT_VERSION} file")
        meta = {k: v for k, v in rec.items() if k not in ("k", "v", "req", "opt")}
        return cls(path, version, required, optional, meta)

    def check(self, known: Iterable[str]) -> None:
        """Refuse (:class:`JournalUnsupported`) a file that requires a record kind not in ``known``."""
        if self.required is None:
            return
        missing = sorted(self.required - set(known))
        if missing:
            raise JournalUnsupported(self.path, self.version, missing[0],
                                     f"the file requires record kinds {', '.join(map(repr, missing))}, which this "
                                     f"reader does not know (it knows {', '.join(map(repr, sorted(known)))}); it "
                                     f"was written by a newer coordinator: upgrade, or move the file away")

    def check_kind(self, kind: Any, known: Iterable[str]) -> bool:
        """For a record of ``kind`` that the reader does not know (not in ``known``): True when the file
        declares it optional (skip it), else :class:`JournalUnsupported` (never skipped silently)."""
        if self.optional is not None and kind in self.optional:
            return True
        declared = "required by the file's header" if self.required and kind in self.required else \
            "not declared in the file's header" if self.version >= 2 else "not a kind version-1 journals hold"
        raise JournalUnsupported(self.path, self.version, str(kind),
                                 f"a record of this kind ({declared}) is not known to this reader (it knows "
                                 f"{', '.join(map(repr, sorted(known)))}); refusing to skip it")

    def __repr__(self) -> str:
        return f"<JournalHeader {self.path} v{self.version} req={sorted(self.required or ())} {self.meta}>"


def header_record(kinds: Iterable[str] = (), optional_kinds: Iterable[str] = (),
                  meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The header record of a new version-2 file (see the module docstring)."""
    rec: dict[str, Any] = {"k": HEADER_KIND, "v": FORMAT_VERSION, "req": sorted(set(kinds)),
                           "opt": sorted(set(optional_kinds))}
    for key, value in (meta or {}).items():
        if key in rec:
            raise ValueError(f"header metadata cannot override {key!r}")
        rec[key] = value
    return rec


def _file_version(path: str, head: bytes) -> int:
    """The format version of a file starting with ``head`` (8 bytes); raises for anything else."""
    if head[:len(_NAME)] != _NAME:
        raise JournalCorrupt(path, 0, f"not a journal file (header {head!r}, expected {MAGIC!r})")
    version = int.from_bytes(head[len(_NAME):], "big")
    if version not in READABLE_VERSIONS:
        raise JournalUnsupported(path, version, None, f"this reader reads format versions "
                                 f"{', '.join(map(str, READABLE_VERSIONS))}; the file was written by a newer "
                                 f"coordinator: upgrade, or move the file away")
    return version


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

    __slots__ = ("good_end", "size", "damage", "needs_header", "version", "header", "records")

    def __init__(self) -> None:
        self.good_end = 0
        self.size = 0
        self.damage: str | None = None
        self.needs_header = False              # no file header yet (empty or torn file header)
        self.version: int = FORMAT_VERSION
        self.header: JournalHeader | None = None  # None: a version-2 file with no header record yet
        self.records = 0                       # good records, header records not counted


def _scan(path: str, result: _Scan, decode: bool = True,
          header_only: bool = False) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """Yield ``(offset, record)`` for every good record but the header record; fill ``result``
    (the header too); raise on middle damage.

    With ``decode=False`` (opening for append) only the first record (the header) and the last one
    are decoded, the others are checked by length and CRC and yielded as ``None``: a record with a
    good CRC was written whole, so only the last one can be a torn-looking leftover worth decoding;
    the rest costs msgpack decoding time for nothing at start-up. ``read`` decodes everything.
    ``header_only`` stops after the header record."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        result.size = size
        if size == 0:
            result.needs_header = True
            return
        head = f.read(len(MAGIC))
        if len(head) < len(MAGIC) and (MAGIC.startswith(head) or MAGIC_V1.startswith(head)):
            result.needs_header = True
            result.damage = f"torn file header ({len(head)} of {len(MAGIC)} bytes)"
            log.warning("journal %s: %s at byte offset 0; treating the journal as empty", path, result.damage)
            return
        result.version = version = _file_version(path, head)
        if version == 1:
            result.header = JournalHeader(path, 1)
            if header_only:
                return
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
                    elif decode or end == size or result.header is None:
                        rec, reason = _decode(payload)
            if reason is None:
                if result.header is None:  # version 2: the first record is the header record
                    if rec is None or rec.get("k") != HEADER_KIND:
                        raise JournalCorrupt(path, off, "the first record of a version-2 journal is not its "
                                             f"header record (kind {rec.get('k') if rec else None!r})")
                    result.header = JournalHeader.from_record(path, rec, off)
                elif rec is not None and rec.get("k") == HEADER_KIND:
                    raise JournalCorrupt(path, off, "a second header record")
                else:
                    result.records += 1
                    yield off, rec
                off = end
                result.good_end = off
                if header_only and result.header is not None:
                    return
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

    ``Journal(path, fsync="batch", kinds=(), optional_kinds=(), meta=None)`` creates the file if needed
    (file header + a header record declaring ``kinds`` as required and ``optional_kinds`` as optional,
    plus ``meta``), validates an existing one (framing and CRC of every record, msgpack of the header
    and the last one; :class:`JournalCorrupt` on damage before the end) and truncates a torn last
    record away. An existing file keeps the header it has (:attr:`header`): a writer that needs other
    kinds declared starts a new file. A version-1 file is refused (:class:`JournalError`): it is
    read-only.
    Attributes: ``path``, ``fsync`` (the policy), ``header``, ``size`` (bytes, = offset of the next
    record), ``truncated_bytes`` (how much a torn tail cost at open), ``records_at_open`` (header not
    counted), ``created`` (this instance created the file).
    """

    def __init__(self, path: str | os.PathLike[str], fsync: FsyncPolicy = "batch", *, kinds: Iterable[str] = (),
                 optional_kinds: Iterable[str] = (), meta: dict[str, Any] | None = None) -> None:
        if fsync not in _POLICIES:
            raise ConfigurationError(f"fsync: must be one of {', '.join(_POLICIES)}, got {fsync!r}")
        self.path = os.fspath(path)
        self.fsync: FsyncPolicy = fsync
        self._packer = _new_packer()
        self._dirty = False
        self.truncated_bytes = 0
        self.records_at_open = 0

        self.created = not os.path.exists(self.path)
        scan = _Scan()
        if self.created:
            scan.needs_header = True
        else:
            for _ in _scan(self.path, scan, decode=False):
                pass
            if scan.version != FORMAT_VERSION and not scan.needs_header:
                raise JournalError(f"journal {self.path}: format version {scan.version} is read-only; new records "
                                   f"go to a new file (the site starts one at start-up)")
            self.records_at_open = scan.records
        header_rec = header_record(kinds, optional_kinds, meta) if scan.header is None else None
        self._f = open(self.path, "ab", buffering=0)
        try:
            if scan.good_end < scan.size:
                self.truncated_bytes = scan.size - scan.good_end
                os.ftruncate(self._f.fileno(), scan.good_end)
                self._durable()
            self.size = scan.good_end
            if header_rec is not None:  # new file, torn file header, or cut inside the header record
                head = bytearray(MAGIC if self.size == 0 else b"")  # else: the file header is there already
                head += _pack_record(self._packer, header_rec)
                self._write(head)
                self._durable()
                self.header = JournalHeader.from_record(self.path, header_rec, len(MAGIC))
            else:
                assert scan.header is not None
                self.header = scan.header
            if self.created and fsync != "never":
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
        """Yield every good record in order (not the header record). A torn last record is logged and
        skipped; damage before the end raises :class:`JournalCorrupt`, an unreadable version
        :class:`JournalUnsupported`. A missing file raises ``FileNotFoundError``; an empty one yields
        nothing."""
        for _, rec in _scan(os.fspath(path), _Scan()):
            yield rec  # type: ignore[misc]

    @staticmethod
    def read_with_offsets(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Like :meth:`read`, yielding ``(byte_offset, record)`` pairs."""
        yield from _scan(os.fspath(path), _Scan())  # type: ignore[misc]

    @staticmethod
    def read_header(path: str | os.PathLike[str]) -> JournalHeader:
        """The header of the file at ``path`` (reads only its first record). An empty file, or one cut
        before its header record was complete, has the header of an empty version-2 journal."""
        path = os.fspath(path)
        scan = _Scan()
        for _ in _scan(path, scan, header_only=True):
            pass
        return scan.header or JournalHeader(path, FORMAT_VERSION, frozenset(), frozenset())

    @staticmethod
    def compact(path: str | os.PathLike[str], records: Iterable[dict[str, Any]], *, kinds: Iterable[str] = (),
                optional_kinds: Iterable[str] = (), meta: dict[str, Any] | None = None, durable: bool = True,
                mode_like: str | None = None, before_replace: Callable[[str], None] | None = None) -> int:
        """Atomically replace (or create) the journal at ``path`` with a new version-2 file holding exactly
        ``records`` after a header record (``kinds``, ``optional_kinds``, ``meta``); returns its size.

        Written to a temp file in the same directory, fsynced, renamed over ``path`` with
        ``os.replace`` and the directory fsynced. If anything fails, ``path`` is left as it was.
        ``records`` may be a lazy iterable (it may even read ``path`` itself). Close a
        :class:`Journal` open on ``path`` before compacting and reopen it after. ``durable=False`` skips
        the fsyncs (for journals written with ``fsync="never"``). The new file gets the permissions of
        the one it replaces, or of ``mode_like`` when there is none. ``before_replace`` (tests: crash
        injection) is called with the temp file's path once it is complete and synced.
        """
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=TEMP_SUFFIX, dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                packer = _new_packer()
                buf = bytearray(MAGIC)
                buf += _pack_record(packer, header_record(kinds, optional_kinds, meta))
                size = 0
                for record in records:
                    buf += _pack_record(packer, record)
                    if len(buf) >= _COMPACT_CHUNK:
                        f.write(buf)
                        size += len(buf)
                        buf.clear()
                f.write(buf)
                size += len(buf)
                f.flush()
                if durable:
                    os.fsync(f.fileno())
            for like in (path, mode_like):  # mkstemp makes 0600 files: keep the mode the journal had
                if like is None:
                    continue
                try:
                    os.chmod(tmp, os.stat(like).st_mode & 0o7777)
                    break
                except OSError:
                    pass
            if before_replace is not None:
                before_replace(tmp)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        if durable:
            _fsync_dir(directory)
        return size
