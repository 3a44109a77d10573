"""Appended files (the JSON-lines records and the logs): an append never loses another writer's line.

A local file is opened with O_APPEND and written in one ``write()``. An object store cannot append, and a
read-modify-write of one shared object loses whatever another process appended in between: each process appends to
a part of its own, ``<file>.parts/<part>``, and readers merge the pieces (docs/architecture.md, "Appends").
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import uuid
from datetime import UTC, datetime

from pydantic import BaseModel, ValidationError

from orchestrator.errors import StoreError
from orchestrator.store.fs import DAMAGED_LINE, M, StoreFiles, _store_errors, describe_invalid

log = logging.getLogger("orchestrator.store")  # the CLI prints its warnings (a damaged line skipped)

PARTS = ".parts"  # on an object store, <file>.parts/<part>: one process's appends to <file>


class _OwnParts:
    """This process's part of each file it appends to on an object store (named once, at its first append),
    with a lock against this process's other threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[str, tuple[str, threading.Lock]] = {}

    def of(self, url: str) -> tuple[str, threading.Lock]:
        with self._lock:
            if url not in self._parts:
                host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
                name = f"{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                self._parts[url] = (name, threading.Lock())
            return self._parts[url]


_own_parts = _OwnParts()


def _new_process() -> None:
    global _own_parts
    _own_parts = _OwnParts()  # a forked child is another writer: parts of its own


os.register_at_fork(after_in_child=_new_process)


def join_pieces(pieces: list[bytes]) -> bytes:
    """An appended file's pieces as one text: a piece that does not end its last line (a log's half line) is
    ended, so that the next piece's first line stays a line of its own."""
    last = len(pieces) - 1
    return b"".join(p if not p or p.endswith(b"\n") or i == last else p + b"\n" for i, p in enumerate(pieces))


class AppendingStore(StoreFiles):
    """Appending to a file and reading it back, merged: the JSON-lines records, and the job's logs."""

    def _append_line(self, path: str, record: BaseModel) -> None:
        self._append_bytes(path, record.model_dump_json().encode() + b"\n")

    def _append_bytes(self, path: str, data: bytes) -> None:
        """Append ``data`` so that no other appender's data is ever lost (docs/architecture.md, "Appends").

        A local file is opened with O_APPEND and written in one ``write()``: the kernel places each write at the
        end, whoever else appends. An object store cannot append, and a read-modify-write of one shared object
        loses whatever another process appended in between: each process appends to its own part instead,
        ``<file>.parts/<part>`` (read-modify-write of an object no other process writes, under a lock against
        this process's other threads); readers merge the parts (:meth:`_pieces`).
        """
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(handle, view) :]
            finally:
                os.close(handle)
            return
        part, lock = _own_parts.of(self.fs.unstrip_protocol(path))
        part_path = f"{path}{PARTS}/{part}"
        with lock:
            try:
                existing = self._read_bytes(part_path)
            except FileNotFoundError:
                existing = b""
            self._write_bytes(part_path, existing + data)

    def _pieces(self, path: str) -> list[tuple[str, bytes]]:
        """An appended file's stored pieces, in reading order, with their bytes: a local file is one piece; on an
        object store, the whole object (written by versions before parts), then every process's part, oldest
        part first (a part's name starts with the UTC time of its first append).

        Raises:
            FileNotFoundError: there is no piece at all.
        """
        if self.is_local:
            return [(path, self._read_bytes(path))]
        try:
            parts = sorted(str(p) for p in self.fs.ls(path + PARTS, detail=False, refresh=True))
        except FileNotFoundError:
            parts = []
        wanted = [path, *parts]
        found = self.fs.cat(wanted, on_error="return")
        pieces: list[tuple[str, bytes]] = []
        for piece in wanted:
            data = found.get(self.fs._strip_protocol(piece), FileNotFoundError(piece))
            if isinstance(data, FileNotFoundError):
                continue  # no whole object (a job of this version), or a part deleted since the listing
            if isinstance(data, BaseException):
                raise data
            pieces.append((piece, data))
        if not pieces:
            raise FileNotFoundError(path)
        return pieces

    def _read_appended(self, path: str) -> bytes:
        """An appended file's bytes, its pieces merged (see :meth:`_pieces`)."""
        return join_pieces([data for _, data in self._pieces(path)])

    def _read_lines(self, path: str, model: type[M], *, skip_damaged: bool = False) -> list[M]:
        """Every record of a JSON-lines file (all its pieces). A damaged line is an error naming the file (or
        part) and the line, or, with ``skip_damaged`` (records that only report, such as the history), skipped
        with a warning. A local file's last line without its newline is one still being appended: it is read
        next time."""
        try:
            pieces = self._pieces(path)
        except FileNotFoundError:
            return []
        records: list[M] = []
        for piece, data in pieces:
            lines = data.split(b"\n")
            if self.is_local and lines:
                lines[-1] = b""  # b"" after the last newline; else the start of a line being written
            for number, raw in enumerate(lines, start=1):
                if not raw.strip():
                    continue
                try:
                    records.append(model.model_validate_json(raw.decode("utf-8")))
                except UnicodeDecodeError as exc:
                    problem = f"not UTF-8 text (byte {exc.start + 1} of the line)"
                except ValidationError as exc:
                    problem = describe_invalid(exc)
                else:
                    continue
                where = f"store {self.url}: {self._relative(piece)} line {number}"
                if not skip_damaged:
                    raise StoreError(f"{where} is unreadable ({problem})", hint=DAMAGED_LINE)
                log.warning("%s is unreadable (%s); it is left out, the file's other lines are read", where, problem)
        return records

    # ---------------------------------------------------------------------------------------- logs
    @_store_errors
    def write_log(self, name: str, log: str, text: str) -> None:
        self._write_bytes(self.path(name, "logs", log), text.encode())

    @_store_errors
    def append_log(self, name: str, log: str, text: str) -> None:
        self._append_bytes(self.path(name, "logs", log), text.encode())

    @_store_errors
    def log_pieces(self, name: str) -> dict[str, list[tuple[str, int]]]:
        """Each log of the job (``driver.log``, ...) with its stored pieces in reading order, each as its path under
        ``logs/`` and its size in bytes (one listing, no reads): on a local folder the log's file; on an object
        store the whole object an older version wrote, then each process's part (``driver.log.parts/<part>``)."""
        folder = self.path(name, "logs")
        try:
            if self.is_local:
                entries = self.fs.ls(folder, detail=True, refresh=True)
                found = {str(e["name"]): e for e in entries if e.get("type") == "file"}
            else:
                found = {str(path): e for path, e in self.fs.find(folder, detail=True).items()}
        except FileNotFoundError:
            return {}
        pieces: dict[str, list[tuple[str, int]]] = {}
        for path in sorted(found):
            piece = path.removeprefix(folder + "/")
            log, _, part = piece.partition(PARTS + "/")
            if log.startswith(".tmp-") or "/" in log or (not part and PARTS in piece) or "/" in part:
                continue  # a local file being written, or something the store did not write
            pieces.setdefault(log, []).append((piece, int(found[path].get("size") or 0)))
        return {log: sorted(pieces[log], key=lambda p: (PARTS in p[0], p[0])) for log in sorted(pieces)}

    @_store_errors
    def read_log(self, name: str, piece: str, start: int = 0) -> bytes:
        """A log piece's bytes (``log_pieces``) from ``start`` on (a range read: ``logs -f`` fetches only what is
        new)."""
        data: bytes = self.fs.cat_file(self.path(name, "logs", piece), start=start)
        return data

    @_store_errors
    def read_logs(self, name: str) -> dict[str, str]:
        """Every log of the job, whole, its pieces merged."""
        return {
            log: join_pieces([self.read_log(name, piece) for piece, _ in pieces]).decode(errors="replace")
            for log, pieces in self.log_pieces(name).items()
        }
