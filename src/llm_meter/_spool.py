"""The durable spool: append-only segment files in a directory several processes share.

Layout of ``spool_dir``::

    seg-<ns>-<pid>-<rand>.log   events, one record per line: ``<crc32 hex8> <wire JSON>\\n``
    seg-<ns>-<pid>-<rand>.ack   how far that segment is acknowledged (a byte offset)
    dead-letters.jsonl          events Polar refused (422), with the reason

Rules that make it safe:

- Each process appends only to segments it created. A segment is created under a temporary
  name, locked with ``flock`` and only then renamed into place, so a segment that another
  process can lock is one whose writer is gone (SIGKILL included: the kernel drops the lock).
- Appends are one ``os.write`` of a whole line on an ``O_APPEND`` descriptor: concurrent
  threads never interleave inside a line. A line that was cut short by a crash fails its
  CRC and is skipped and counted, never parsed.
- A write the disk cuts short (full disk) raises, so the caller keeps that event in memory.
  The half record it leaves has no newline: the next record appended runs into it and the
  joined line fails its CRC, so the reader looks for a whole record at the end of that line
  (``_resync``) and skips only the half. (Cutting the half off with ``ftruncate`` instead
  could destroy a record another thread appended meanwhile: appends take no lock.)
- A segment's ``.ack`` offset only moves forward after the transport acknowledged every
  line before it, and the events it refused are written to the dead-letter file: a batch
  whose dead letter the disk did not take is *held* (:meth:`Spool.hold`), and the offset
  stops before it until its letters are written. Lines after it are sent again after a
  crash; Polar's ``external_id`` deduplication turns such a resend into ``duplicates``, not
  a second charge.
- Orphaned segments (writer gone) are adopted by whichever process locks them first and
  deleted once fully acknowledged. The adopter checks the locked file is still the one at
  that path, so a segment deleted meanwhile is never sent twice.
- Only our own files count (CWE-59). The directory must belong to this process's user and
  not be writable by group or others (it is created 0700, files 0600): in a directory others
  can write, a planted segment would be sent with our token, billing a stranger's customer,
  and a planted symlink would make us write wherever it points. Every file is opened with
  ``O_NOFOLLOW``; a segment, ``.ack`` or dead-letter file that is not a regular file of ours
  with a single link is never read, adopted or written.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import logging
import os
import stat
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import Iterator
from copy import copy
from dataclasses import dataclass
from typing import Any, Final

from ._exceptions import ConfigurationError
from ._throttle import Throttle

__all__ = [
    "Batch",
    "SegmentStatus",
    "Spool",
    "dead_letter_entry",
    "encode_record",
    "iter_dead_letters",
    "requeue_dead_letters",
    "secure_directory",
    "spool_status",
]

log = logging.getLogger("llm_meter")

_SEGMENT_BYTES: Final = 8 * 1024 * 1024
_READ_CHUNK: Final = 256 * 1024
#: A retired segment is deleted only this long after its last append could have started.
_GRACE: Final = 2.0
#: Age after which a temporary file is known to be left by a killed process.
_STALE: Final = 3600.0
#: Every file is opened without following a symlink, and is not inherited by child programs.
_NOFOLLOW: Final = os.O_NOFOLLOW | os.O_CLOEXEC
DEAD_LETTERS: Final = "dead-letters.jsonl"


def encode_record(payload: str) -> bytes:
    """One spool line: CRC32 of the payload, a space, the payload, a newline."""
    data = payload.encode()
    return b"%08x %s\n" % (zlib.crc32(data), data)


class _Segment:
    """One segment file this process holds the lock of (its own, or an adopted orphan)."""

    __slots__ = (
        "ack_fd",
        "ack_offset",
        "ack_path",
        "fd",
        "gone",
        "held",
        "own",
        "path",
        "read_offset",
        "retired_at",
    )

    def __init__(self, path: str, fd: int, *, own: bool, ack_offset: int = 0) -> None:
        self.path = path
        self.ack_path = path[: -len(".log")] + ".ack"
        self.fd = fd
        self.own = own
        self.ack_offset = ack_offset
        self.read_offset = ack_offset
        #: ``None`` while appends may go to it; the time it stopped being the active segment.
        self.retired_at: float | None = None if own else 0.0
        self.ack_fd: int | None = None
        #: Its file was deleted (the spool directory removed?): what it holds is still read from
        #: the open descriptor, but no ``.ack`` is written for it any more.
        self.gone = False
        #: Batches settled behind a held one (see :meth:`Spool.hold`), in the order they were read:
        #: the ``.ack`` offset moves over them only once the held ones before them are released.
        self.held: list[Batch] = []

    @property
    def settled_offset(self) -> int:
        """Where reading goes on after what was sent: past the batches waiting behind a hold."""
        return self.held[-1].end_offset if self.held else self.ack_offset


@dataclass
class Batch:
    """Lines read from one segment, in order, not yet acknowledged."""

    segment: _Segment
    payloads: list[str]
    end_offset: int
    lines: int = 0
    """Complete lines up to ``end_offset``: the payloads and the unreadable lines skipped."""
    waiting: bool = False
    """Held (:meth:`Spool.hold`): its refused events are not yet written as dead letters."""

    @property
    def own(self) -> bool:
        return self.segment.own


def secure_directory(directory: str) -> None:
    """Create *directory* (0700) if needed; refuse one that another user could tamper with.

    Raises :class:`~llm_meter.ConfigurationError` with the reason.
    """
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.stat(directory)
        link = os.lstat(directory)
    except OSError as exc:
        raise ConfigurationError(f"spool_dir {directory!r} cannot be used: {exc.strerror or exc}") from None
    uid = os.geteuid()
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigurationError(f"spool_dir {directory!r} is not a directory")
    if info.st_uid != uid:
        raise ConfigurationError(
            f"spool_dir {directory!r} belongs to uid {info.st_uid}, not to this process's user "
            f"(uid {uid}): its owner could plant events billed with your token; use a directory of your own"
        )
    if info.st_mode & 0o022:
        raise ConfigurationError(
            f"spool_dir {directory!r} is writable by group or others (mode {stat.S_IMODE(info.st_mode):o}): "
            "they could plant events billed with your token, or symlinks to files this process would "
            "overwrite; use a private directory (chmod 700)"
        )
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (uid, 0):
        raise ConfigurationError(
            f"spool_dir {directory!r} is a symlink owned by uid {link.st_uid}, who could point it elsewhere"
        )


def _open_own(path: str, flags: int, mode: int = 0o600) -> int:
    """Open a regular file of ours with one link, never through a symlink (``OSError`` otherwise)."""
    fd = os.open(path, flags | _NOFOLLOW, mode)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink > 1:
            raise PermissionError(errno.EPERM, "not a regular file of this user", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Spool:
    """Append-only, crash-safe, multi-process event log (see the module docstring).

    Raises :class:`~llm_meter.ConfigurationError` for a directory that is not safe to use.
    """

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.directory = os.fspath(directory)
        secure_directory(self.directory)
        self.fsync = fsync
        self.segment_bytes = _SEGMENT_BYTES
        self._active: _Segment | None = None
        self._segments: list[_Segment] = []  # owned, oldest first (worker side)
        self._create_lock = threading.Lock()
        self._appended = itertools.count()
        self.corrupt = 0
        self._throttle = Throttle()
        self._refused: set[str] = set()  # files in the directory that are not ours (logged once)
        self._adopt_lock = threading.Lock()
        #: Records found in adopted segments (not yet acknowledged when adopted), and how many
        #: of them were acknowledged, dead-lettered or skipped as unreadable since.
        self.inherited = 0
        self.inherited_done = 0
        _SPOOLS.add(self)

    def __repr__(self) -> str:
        return f"Spool({self.directory!r})"

    # -- caller side ---------------------------------------------------------------------
    def append(self, line: bytes) -> None:
        """Append one encoded record; durable in the OS when this returns (``fsync`` for power loss).

        Raises ``OSError`` when the record is not (wholly) in the spool: the caller keeps it.
        """
        segment = self._active
        if segment is None:
            segment = self._open_segment()
        written = os.write(segment.fd, line)
        if written != len(line):
            raise OSError(errno.ENOSPC, f"the spool took {written} of {len(line)} bytes (disk full?)")
        next(self._appended)
        if self.fsync:
            try:
                os.fsync(segment.fd)
            except OSError as exc:  # the record is written; only its flush to the device failed
                self._log_once("fsync", "llm_meter: fsync of %s failed (%s)", segment.path, exc)

    @property
    def appended(self) -> int:
        """Records this process appended (``itertools.count`` is advanced without a lock)."""
        return next(copy(self._appended))

    def _open_segment(self) -> _Segment:
        with self._create_lock:
            if self._active is not None:
                return self._active
            segment = self._create()
            self._segments.append(segment)
            self._active = segment
            return segment

    def _create(self) -> _Segment:
        name = _segment_name()
        temporary = os.path.join(self.directory, f"tmp-{name}.log")
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | _NOFOLLOW, 0o600)
        path = os.path.join(self.directory, name + ".log")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours before anyone can see it
            os.rename(temporary, path)
        except BaseException:
            os.close(fd)
            _unlink_quietly(temporary)
            raise
        return _Segment(path, fd, own=True)

    # -- worker side ---------------------------------------------------------------------
    def maintain(self) -> None:
        """Worker housekeeping: a new active segment once the current one is big, or deleted.

        A deleted active segment means the spool directory was removed under us: it is
        created again and new events go there, while what the old segment holds is still
        read (and delivered) from its open descriptor.
        """
        segment = self._active
        if segment is None:
            if not os.path.isdir(self.directory):  # removed before any segment was opened
                secure_directory(self.directory)
            return
        info = os.fstat(segment.fd)
        if info.st_nlink == 0:
            if not segment.gone:
                segment.gone = True
                log.warning(
                    "llm_meter: spool segment %s was deleted (spool directory removed?); "
                    "creating the directory again",
                    segment.path,
                )
            secure_directory(self.directory)
        elif info.st_size < self.segment_bytes:
            return
        with self._create_lock:
            new = self._create()
            self._segments.append(new)
            self._active = new
            segment.retired_at = time.monotonic()

    def adopt_orphans(self) -> int:
        """Lock and take over segments whose writer is gone; returns how many.

        Their records not yet acknowledged are added to :attr:`inherited` before the worker
        can see the segments. Safe to call from any thread (the worker, or ``flush()``).
        """
        with self._adopt_lock:
            try:
                names = sorted(os.listdir(self.directory))
            except OSError:
                return 0
            known = {segment.path for segment in self._segments}
            adopted = []
            for name in names:
                if name.startswith("tmp-"):
                    _remove_if_stale(os.path.join(self.directory, name))
                    continue
                if not (name.startswith("seg-") and name.endswith(".log")):
                    continue
                path = os.path.join(self.directory, name)
                if path in known or path in self._refused:
                    continue
                fd = self._lock_orphan(path)
                if fd is None:
                    continue
                ack = _read_ack(path[: -len(".log")] + ".ack")
                self.inherited += _count_lines(fd, ack)
                adopted.append(_Segment(path, fd, own=False, ack_offset=ack))
            if adopted:
                with self._create_lock:
                    self._segments.extend(adopted)
                    self._segments.sort(key=lambda s: os.path.basename(s.path))
                log.info("llm_meter: adopted %d spool segment(s) left by stopped processes", len(adopted))
            return len(adopted)

    def _lock_orphan(self, path: str) -> int | None:
        """A locked descriptor of the segment at *path*, if it is ours and its writer is gone."""
        try:
            fd = _open_own(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a symlink (ELOOP), another user's file, a device...
            self._refused.add(path)
            log.warning("llm_meter: not adopting %s: %s (only this user's own segments are sent)", path, exc)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError(path)  # deleted and replaced meanwhile
        except OSError:  # locked by its live writer, or gone
            os.close(fd)
            return None
        return fd

    def read_batch(self, max_events: int) -> Batch | None:
        """The next unacknowledged lines (at most *max_events*, one segment), or ``None``."""
        for segment in list(self._segments):
            batch = self._read(segment, max_events)
            if batch is not None:
                return batch
            self._finish_if_done(segment)
        return None

    def _read(self, segment: _Segment, max_events: int) -> Batch | None:
        payloads: list[str] = []
        lines = 0
        offset = segment.read_offset
        retired_at = segment.retired_at
        # Our own segment may still receive an append (or finish one) until the grace ends.
        writer_alive = segment.own and (retired_at is None or time.monotonic() - retired_at < _GRACE)
        while len(payloads) < max_events:
            chunk = os.pread(segment.fd, _READ_CHUNK, offset)
            if not chunk:
                break
            at_eof = len(chunk) < _READ_CHUNK
            pos = 0
            while len(payloads) < max_events:
                end = chunk.find(b"\n", pos)
                if end < 0:
                    break
                line = chunk[pos : end + 1]
                payload = _check(line)
                pos = end + 1
                lines += 1
                if payload is None:
                    payload = _resync(line)
                    self._count_corrupt(
                        segment, "corrupt record" if payload is None else "record cut short (disk full?)"
                    )
                if payload is not None:
                    payloads.append(payload)
            offset += pos
            if len(payloads) >= max_events or pos == len(chunk):
                if at_eof:
                    break
                continue
            # A partial line is left in this chunk.
            if not at_eof:
                if pos == 0:  # no newline in a whole chunk: garbage, skip it
                    self._count_corrupt(segment, "oversized record")
                    offset += len(chunk)
                continue
            if writer_alive:
                break  # an append in progress: read it next time
            self._count_corrupt(segment, "truncated record (writer stopped mid-write)")
            offset += len(chunk) - pos
            break
        if offset == segment.read_offset:
            return None
        segment.read_offset = offset
        if not payloads:
            self.commit(Batch(segment, [], offset, lines))  # only unreadable lines: acknowledge them away
            return self._read(segment, max_events)
        return Batch(segment, payloads, offset, lines)

    def _count_corrupt(self, segment: _Segment, what: str) -> None:
        self.corrupt += 1
        log.warning("llm_meter: skipped a %s in %s (%d skipped so far)", what, segment.path, self.corrupt)

    def commit(self, batch: Batch) -> None:
        """Record that every line of *batch* was acknowledged (or dead-lettered).

        Never raises for the disk: if the ``.ack`` cannot be written (disk full, directory
        gone) the offset is kept in memory and written with the next commit; a crash before
        that resends those events, which Polar deduplicates by ``external_id``.
        """
        segment = batch.segment
        if segment.held:  # a batch before it waits for its dead letters: acknowledged after it
            last = segment.held[-1]
            if last.waiting:
                segment.held.append(Batch(segment, [], batch.end_offset, batch.lines))
            else:
                last.end_offset = batch.end_offset
                last.lines += batch.lines
            return
        self._acknowledge(segment, batch.end_offset, batch.lines)

    def hold(self, batch: Batch) -> Batch:
        """*batch* was answered, but an event it refused could not be set aside (disk full?).

        Its lines, and those read after it from its segment, stay unacknowledged (after a
        crash they are sent again: Polar deduplicates the stored ones and refuses the other
        again) until :meth:`unhold` is called with the batch returned here.
        """
        held = Batch(batch.segment, [], batch.end_offset, batch.lines, waiting=True)
        batch.segment.held.append(held)
        return held

    def unhold(self, held: Batch) -> None:
        """The dead letters of *held* are written: acknowledge as far as nothing held stops it."""
        held.waiting = False
        segment = held.segment
        end = segment.ack_offset
        lines = 0
        while segment.held and not segment.held[0].waiting:
            done = segment.held.pop(0)
            end = done.end_offset
            lines += done.lines
        if lines or end != segment.ack_offset:
            self._acknowledge(segment, end, lines)

    def _acknowledge(self, segment: _Segment, end_offset: int, lines: int) -> None:
        segment.ack_offset = end_offset
        if not segment.own:
            self.inherited_done += lines
        try:
            self._write_ack(segment)
        except OSError as exc:
            self._log_once(
                "ack",
                "llm_meter: could not record delivery progress in %s (%s); kept in memory "
                "(after a crash these events are sent again and deduplicated by Polar)",
                segment.ack_path,
                exc,
            )
        self._finish_if_done(segment)

    def _write_ack(self, segment: _Segment) -> None:
        if segment.gone:
            return
        if segment.ack_fd is None:
            if os.fstat(segment.fd).st_nlink == 0:
                segment.gone = True  # never create an .ack for a segment that no longer exists
                return
            segment.ack_fd = _open_own(segment.ack_path, os.O_RDWR | os.O_CREAT)
        # Overwritten in place, fixed width: one small write, no new file per batch. A torn
        # write reads as garbage, i.e. offset 0: everything is resent and deduplicated.
        data = b"%020d" % segment.ack_offset
        if os.pwrite(segment.ack_fd, data, 0) != len(data):
            raise OSError(errno.ENOSPC, "short write")
        if self.fsync:
            os.fsync(segment.ack_fd)

    def release_reads(self) -> None:
        """Forget what was read but not acknowledged: it is read (and sent) again."""
        for segment in list(self._segments):
            segment.read_offset = segment.settled_offset

    def _log_once(self, key: str, message: str, *args: object) -> None:
        """Log a recurring disk problem at most once a minute."""
        if self._throttle.due(key):
            log.error(message, *args)

    def release(self, batch: Batch) -> None:
        """*batch* was not delivered: read it again next time."""
        batch.segment.read_offset = batch.segment.settled_offset

    def _finish_if_done(self, segment: _Segment) -> None:
        """Delete a retired (or adopted) segment once all of it is acknowledged."""
        retired_at = segment.retired_at
        if retired_at is None or segment.ack_offset != segment.read_offset:
            return
        if segment.own and time.monotonic() - retired_at < _GRACE:
            return
        if os.fstat(segment.fd).st_size > segment.ack_offset:
            return  # something arrived after all
        for path in (segment.path, segment.ack_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:  # a read-only directory: kept, deleted by a later pass
                self._log_once("unlink", "llm_meter: could not delete %s (%s)", path, exc)
                return
        with self._create_lock:
            _close_segment(segment)
            if segment in self._segments:
                self._segments.remove(segment)

    def close(self) -> None:
        """Delete this process's fully acknowledged segments and unlock the rest for others."""
        for segment in list(self._segments):
            segment.retired_at = 0.0 if segment.own else segment.retired_at
            try:
                if segment.ack_offset == segment.read_offset:
                    self._finish_if_done(segment)
            except OSError:
                pass
        self.release_all()

    def release_all(self) -> None:
        """Close every segment without deleting anything (the process is ending or forked)."""
        for segment in self._segments:
            _close_segment(segment)
        self._segments = []
        self._active = None

    # -- dead letters --------------------------------------------------------------------
    def dead_letter(self, payload: str, reason: str, status: int) -> None:
        """Set one event aside with the reason it was refused (``OSError`` if it cannot be written).

        The file is locked while a letter is added, so ``dead-letters --retry`` (which holds
        the lock while it takes the letters out) never misses one; a letter the disk cuts
        short is cut off again, never left to spoil the next.
        """
        data = json.dumps(dead_letter_entry(payload, reason, status), ensure_ascii=False).encode() + b"\n"
        path = os.path.join(self.directory, DEAD_LETTERS)
        for _ in range(10):
            fd = _open_own(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                _lock(fd)
                try:
                    if os.stat(path, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
                        continue  # a retry took the letters out meanwhile: add to the new file
                except FileNotFoundError:
                    continue
                size = os.fstat(fd).st_size
                written = os.write(fd, data)
                if written != len(data):
                    os.ftruncate(fd, size)  # locked: no other letter was added meanwhile
                    raise OSError(errno.ENOSPC, f"the dead letter took {written} of {len(data)} bytes")
                if self.fsync:
                    os.fsync(fd)
                return
            finally:
                os.close(fd)
        raise OSError(errno.EAGAIN, "the dead-letter file kept being replaced", path)


def dead_letter_entry(payload: str, reason: str, status: int) -> dict[str, Any]:
    """A dead letter: the event (or, for a damaged record that is not JSON, its raw ``payload``)."""
    try:
        event: Any = json.loads(payload)
    except ValueError:
        return {"payload": payload, "reason": reason, "status": status, "at": time.time()}
    return {"event": event, "reason": reason, "status": status, "at": time.time()}


def _check(line: bytes) -> str | None:
    """The payload of a well-formed line, ``None`` if its CRC or shape is wrong."""
    if len(line) < 11 or line[8:9] != b" ":
        return None
    data = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(data):
            return None
        return data.decode()
    except (ValueError, UnicodeDecodeError):
        return None


def _resync(line: bytes) -> str | None:
    """The whole record at the end of *line*, if a half-written record ran into it.

    A half record holds no newline, so the record appended after it is the tail of the
    line: the first position where a valid ``<crc> <payload>`` starts.
    """
    space = line.find(b" ", 9)
    while space != -1:
        start = space - 8
        if start > 0:
            payload = _check(line[start:])
            if payload is not None:
                return payload
        space = line.find(b" ", space + 1)
    return None


def _read_ack(path: str) -> int:
    try:
        fd = _open_own(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return 0  # none, or not ours: resend from the start, deduplicated by external_id
    try:
        return int(os.read(fd, 64).strip() or b"0")
    except (OSError, ValueError):
        return 0
    finally:
        os.close(fd)


def _count_lines(fd: int, offset: int) -> int:
    """Complete lines in the file from *offset* on."""
    count = 0
    while chunk := os.pread(fd, _READ_CHUNK, offset):
        count += chunk.count(b"\n")
        offset += len(chunk)
    return count


def _close_segment(segment: _Segment) -> None:
    for fd in (segment.fd, segment.ack_fd):
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    segment.ack_fd = None


def _reset_in_child() -> None:
    """After ``os.fork()``: the child appends to segments of its own, never the parent's."""
    for spool in list(_SPOOLS):
        spool.release_all()
        spool._create_lock = threading.Lock()
        spool._adopt_lock = threading.Lock()
        spool._appended = itertools.count()
        spool.inherited = spool.inherited_done = spool.corrupt = 0


#: Every live spool, for the fork hook (one hook for all: a hook per spool could never be removed).
_SPOOLS: weakref.WeakSet[Spool] = weakref.WeakSet()
os.register_at_fork(after_in_child=_reset_in_child)


def iter_dead_letters(directory: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The dead letters of a spool directory, oldest first.

    Letters stranded by an older version's ``dead-letters --retry`` that was killed half-way
    (``dead-letters.jsonl.requeue-*``) are included: ``--retry`` requeues them too.
    """
    directory = os.fspath(directory)
    for name in _stranded_requeues(directory):
        yield from iter_dead_letters_file(os.path.join(directory, name))
    yield from iter_dead_letters_file(os.path.join(directory, DEAD_LETTERS))


@dataclass(frozen=True)
class SegmentStatus:
    """What ``llm-meter status`` shows for one segment."""

    path: str
    pending: int  # records after the acknowledged offset
    live: bool  # its writer (or an adopter) still holds the lock


def spool_status(directory: str | os.PathLike[str]) -> list[SegmentStatus]:
    """Read-only survey of a spool directory (takes each free lock only for an instant)."""
    directory = os.fspath(directory)
    try:
        names = sorted(n for n in os.listdir(directory) if n.startswith("seg-") and n.endswith(".log"))
    except FileNotFoundError:
        return []
    result = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = _open_own(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue  # gone, or not ours: never adopted, so not counted
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                live = False
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                live = True
            pending = _count_lines(fd, _read_ack(path[: -len(".log")] + ".ack"))
        finally:
            os.close(fd)
        result.append(SegmentStatus(path, pending, live))
    return result


def requeue_dead_letters(directory: str | os.PathLike[str]) -> int:
    """Move every dead letter back into the spool (in a new segment); returns how many.

    Crash-safe: the dead-letter file stays locked (processes adding a letter wait) while its
    letters are written to a whole new segment under a temporary name, synced and renamed
    into place; only then are they removed from the dead-letter file. Killed before the
    rename, nothing changed; killed after it, the letters are both spooled and still listed,
    and a second retry spools them again: Polar deduplicates them by ``external_id``.
    Letters that cannot be requeued (a damaged record kept as a raw ``payload``) stay.
    """
    directory = os.fspath(directory)
    secure_directory(directory)
    count = 0
    for name in _stranded_requeues(directory):
        count += _requeue_file(directory, os.path.join(directory, name))
    return count + _requeue_file(directory, os.path.join(directory, DEAD_LETTERS))


def _requeue_file(directory: str, path: str) -> int:
    try:
        fd = _open_own(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return 0
    try:
        _lock(fd)
        try:
            if os.stat(path, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
                return 0  # another retry took these letters meanwhile
        except FileNotFoundError:
            return 0
        records, keep = _split_letters(_read_all(fd), path)
        if records:
            _write_file(directory, f"{_segment_name()}.log", b"".join(records))
        # Crash here: the letters are spooled and still listed; a second retry is deduplicated.
        if keep:  # replaced, not truncated: a writer waiting for the lock sees the new file
            _write_file(directory, os.path.basename(path), b"".join(keep))
        else:
            os.unlink(path)
        return len(records)
    finally:
        os.close(fd)


def _split_letters(data: bytes, path: str) -> tuple[list[bytes], list[bytes]]:
    """Spool records for the letters that hold an event, and the lines to keep as they are."""
    records: list[bytes] = []
    keep: list[bytes] = []
    for line in data.splitlines(keepends=True):
        if not line.strip():
            continue
        try:
            event = json.loads(line)["event"]
            if not isinstance(event, dict):
                raise TypeError(event)
            records.append(encode_record(json.dumps(event, separators=(",", ":"), ensure_ascii=False)))
        except (ValueError, TypeError, KeyError):
            log.warning("llm_meter: a dead letter in %s cannot be requeued; it is kept", path)
            keep.append(line if line.endswith(b"\n") else line + b"\n")
    return records, keep


def _stranded_requeues(directory: str) -> list[str]:
    """``dead-letters.jsonl.requeue-<pid>-*`` files whose process is gone (older versions' retries)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    stranded = []
    for name in names:
        if name.startswith(f"{DEAD_LETTERS}.requeue-"):
            pid = name[len(f"{DEAD_LETTERS}.requeue-") :].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue  # possibly a retry still running
            stranded.append(name)
    return stranded


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, not ours to signal
    return True


def _write_file(directory: str, name: str, data: bytes) -> None:
    """Write *name* whole or not at all: a temporary file, synced, then renamed over it."""
    temporary = os.path.join(directory, f"tmp-{uuid.uuid4().hex}-{name}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.rename(temporary, os.path.join(directory, name))
    except BaseException:
        _unlink_quietly(temporary)
        raise
    finally:
        os.close(fd)
    _sync_directory(directory)


def _sync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, _READ_CHUNK, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _lock(fd: int, timeout: float = 10.0) -> None:
    """``flock`` *fd* exclusively, waiting at most *timeout* seconds (``OSError`` after that)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _segment_name() -> str:
    return f"seg-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _remove_if_stale(path: str) -> None:
    """Delete a temporary file of ours that a killed process left (renamed within moments otherwise)."""
    try:
        info = os.lstat(path)
    except OSError:
        return
    if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and time.time() - info.st_mtime > _STALE:
        _unlink_quietly(path)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def iter_dead_letters_file(path: str) -> Iterator[dict[str, Any]]:
    try:
        fd = _open_own(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("llm_meter: not reading dead letters from %s: %s", path, exc)
        return
    with open(fd, encoding="utf-8", errors="replace") as file:
        for line in file:
            line = line.strip()
            if line:
                try:
                    yield json.loads(line)
                except ValueError:
                    log.warning("llm_meter: skipped an unreadable dead letter in %s", path)
