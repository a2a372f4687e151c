"""``file:///dir``: a local directory as an object store (the embedded default).

Writes go through a temp file and ``os.replace`` so a reader never sees half an object; a write
only where no object is yet links the temp file instead, which fails where the name exists. ETags
are the MD5 of the content, as S3 computes them for single-part uploads, cached per
(inode, size, mtime) so a rescan does not re-hash unchanged files.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from storage.base import Blob, ObjectInfo, validate_key, validate_prefix
from storage.durability import StripeLocks, sync_filesystem
from storage.errors import (
    AccessDenied,
    InvalidKey,
    ObjectNotFound,
    ObjectTooLarge,
    TransientStorageError,
    WriteConflict,
)
from storage.etags import EtagCache, md5_file, signature

TEMP_DIR_NAME = ".labeler-tmp"  # reserved top-level folder for in-flight writes; never listed
_MAX_NAME_BYTES = 255  # NAME_MAX of ext4 and most filesystems: longer is ENAMETOOLONG
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO must not block the reader
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
# What opening a link with O_NOFOLLOW raises: ELOOP, or ENOTDIR with O_DIRECTORY (also raised for
# a file where a folder should be: the slow path then tells the two apart).
_LINK_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR})
# What link() raises on a file system without hard links (FAT, some network and FUSE mounts).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS})


class LocalStore:
    """An :class:`~storage.base.ObjectStore` over a directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = self.root.as_uri()
        self._tmp = self.root / TEMP_DIR_NAME
        self._etags = EtagCache()
        self._locks = StripeLocks(self._tmp / "locks")
        self._links = True  # create-if-absent by link(); False once the file system refuses

    def __repr__(self) -> str:
        return f"LocalStore({self.uri!r})"

    def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
        parts = self._parts(key)
        with _os_errors(key):
            fd = self._open_beneath(parts, _READ_FLAGS)
        if fd is None:  # a link on the way: follow it only once it is known to stay inside
            return _read_file(self._path(key), key, max_bytes, self._etags)
        return _read_fd(fd, key, max_bytes, self._etags)

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        with _os_errors(key):
            return self._info(key, path, path.stat())

    def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
        durable: bool = True,
    ) -> ObjectInfo:
        parts = self._parts(key)
        path = self.root / key
        with _os_errors(key):
            folder = self._open_beneath(parts[:-1], _FOLDER_FLAGS, make=True)
            if folder is None:  # a linked folder: resolve it, and write through the old path
                self._path(key)
                folder = os.open(path.parent, _FOLDER_FLAGS)
            try:
                st = None
                if if_none_match and if_match is None and self._links:
                    st = self._create_file(folder, parts[-1], data, durable, key)
                if st is None:
                    # Every other write takes the key's lock, so a conditional write's compare
                    # and its rename are one step for every process on this host (flock), as S3
                    # does server-side.
                    with self._locks.hold(key):
                        self._check_condition(key, path, if_match, if_none_match)
                        st = self._write_file(folder, parts[-1], data, durable)
            finally:
                os.close(folder)
        etag = hashlib.md5(data).hexdigest()  # noqa: S324 - MD5 is S3's ETag, not a security hash
        self._etags.put(signature(st), etag)
        return ObjectInfo(key, len(data), etag, st.st_mtime)

    def sync(self) -> None:
        """Make every write so far durable (those made with ``durable=False``): one flush of the
        store's filesystem (syncfs), instead of one fsync per object."""
        with _os_errors(""):
            sync_filesystem(self.root)

    def _write_file(self, folder: int, name: str, data: bytes, durable: bool) -> os.stat_result:
        """Write ``data`` to a temp file, then rename it to ``name`` in ``folder`` (atomic)."""
        tmp, st = self._write_temp(data, durable)
        try:
            os.replace(tmp, name, dst_dir_fd=folder)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return st

    def _create_file(
        self, folder: int, name: str, data: bytes, durable: bool, key: str
    ) -> os.stat_result | None:
        """Write ``data`` to a temp file, then link it as ``name`` in ``folder`` only where no
        file is: the kernel makes that compare and the write one step, for every process on this
        host, with no lock to take. ``WriteConflict`` when a file is there; None, and nothing
        written, where the file system has no hard links (the caller takes the locked path)."""
        tmp, st = self._write_temp(data, durable)
        try:
            os.link(tmp, name, dst_dir_fd=folder)
        except FileExistsError:
            raise WriteConflict(f"{key!r} already exists") from None
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            self._links = False  # the locked path from now on
            return None
        finally:
            with suppress(FileNotFoundError):
                os.unlink(tmp)  # the record keeps its name; only the temp name goes
        return st

    def _write_temp(self, data: bytes, durable: bool) -> tuple[str, os.stat_result]:
        """A new temp file holding ``data`` (flushed to disk with ``durable``), and its stat."""
        tmp = f"{self._tmp}/{uuid.uuid4().hex}.part"
        try:
            fd = os.open(tmp, _NEW_FILE_FLAGS, 0o666)
        except FileNotFoundError:  # first write, or the temp folder was removed
            self._tmp.mkdir(exist_ok=True)
            fd = os.open(tmp, _NEW_FILE_FLAGS, 0o666)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
                st = os.fstat(fd)  # the same inode under its final name: no stat of that path
            finally:
                os.close(fd)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return tmp, st

    def _check_condition(
        self, key: str, path: Path, if_match: str | None, if_none_match: bool
    ) -> None:
        if if_match is None and not if_none_match:
            return
        try:
            current: str | None = self._info(key, path, path.stat()).etag
        except (FileNotFoundError, ObjectNotFound):
            current = None
        if if_none_match and current is not None:
            raise WriteConflict(f"{key!r} already exists")
        if if_match is not None and current != if_match:
            raise WriteConflict(f"{key!r} changed since it was read (ETag {current})")

    def list(
        self, prefix: str = "", *, start_after: str | None = None, etags: bool = True
    ) -> Iterator[ObjectInfo]:
        """Stream the objects in key order, as S3 does; memory is one directory's names."""
        validate_prefix(prefix)
        with _os_errors(prefix):
            for key, path in _sorted_files(self.root, "", prefix, start_after):
                try:
                    st = path.lstat()
                    # The walk enters no linked folder, so only the file itself can be a link.
                    linked = stat.S_ISLNK(st.st_mode)
                    if linked:
                        st = path.stat()
                except FileNotFoundError:
                    continue  # deleted while we walked (or a dangling link): not there any more
                if not stat.S_ISREG(st.st_mode):
                    continue  # a FIFO or socket is not an object
                if linked and not path.resolve().is_relative_to(self.root):
                    # A link out of the root is listed (its key still gets an invalid_key record)
                    # but never read: its "ETag" comes from the link itself.
                    target = os.readlink(path)
                    etag = hashlib.md5(f"outside:{target}".encode()).hexdigest()  # noqa: S324
                    yield ObjectInfo(key, st.st_size, etag, st.st_mtime)
                elif etags:
                    yield self._info(key, path, st)
                else:
                    yield ObjectInfo(key, st.st_size, "", st.st_mtime)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        with _os_errors(key):
            path.unlink(missing_ok=True)

    def _parts(self, key: str) -> Sequence[str]:
        """The key's path segments, after the checks that need no file system."""
        validate_key(key)
        parts = key.split("/")
        if any(len(segment.encode()) > _MAX_NAME_BYTES for segment in parts):
            raise InvalidKey(f"object key {key[:40]!r}... has a name over {_MAX_NAME_BYTES} bytes")
        if parts[0] == TEMP_DIR_NAME:
            raise InvalidKey(f"object key {key!r} uses the reserved folder {TEMP_DIR_NAME}/")
        return parts

    def _path(self, key: str) -> Path:
        """The key's path, once resolving every link on it shows that it stays in the root."""
        self._parts(key)
        path = self.root / key
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise InvalidKey(f"object key {key!r} resolves outside the store root")
        return path

    def _open_beneath(self, parts: Sequence[str], flags: int, *, make: bool = False) -> int | None:
        """Open ``parts`` under the root one segment at a time, following no link: None when a
        segment is a link, for the caller to resolve it (links are rare; a walk is cheap).

        Nothing outside the root is ever opened this way, not even a device behind a link, and
        no segment is resolved twice. With ``make``, missing folders are made on the way.
        """
        fd = os.open(self.root, _FOLDER_FLAGS)
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                try:
                    child = os.open(
                        part, (flags if last else _FOLDER_FLAGS) | os.O_NOFOLLOW, dir_fd=fd
                    )
                except FileNotFoundError:
                    if not make:
                        raise
                    with suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
                    child = os.open(part, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in _LINK_ERRNOS:
                        return None
                    raise
                os.close(fd)
                fd = child
            opened, fd = fd, -1
            return opened
        finally:
            if fd >= 0:
                os.close(fd)

    def _info(self, key: str, path: Path, st: os.stat_result) -> ObjectInfo:
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"no object at {key!r} in {self.uri}")
        etag = self._etags.get(signature(st))
        if etag is None:
            with _os_errors(key):
                etag = md5_file(path)
            self._etags.put(signature(st), etag)
        return ObjectInfo(key, st.st_size, etag, st.st_mtime)


class LocalFiles:
    """Files named by their paths, as a read-only image source (``labeler classify FILE...``).

    Reads like :class:`LocalStore` (the same size limit before reading, the same errors and
    ETags), but a key is any path on this machine, as the user typed it.
    """

    def __init__(self) -> None:
        self.uri = "file:"
        self._etags = EtagCache()

    def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
        return _read_file(Path(key), key, max_bytes, self._etags)


def _read_file(path: Path, key: str, max_bytes: int | None, etags: EtagCache) -> Blob:
    """The file's bytes and info; ``ObjectTooLarge`` before reading when over ``max_bytes``."""
    with _os_errors(key):
        fd = os.open(path, _READ_FLAGS)
    return _read_fd(fd, key, max_bytes, etags)


def _read_fd(fd: int, key: str, max_bytes: int | None, etags: EtagCache) -> Blob:
    """Read an open file to its end and close it. A FIFO or a device is not an object: the file
    was opened non-blocking, so it is refused here instead of hanging the reader."""
    try:
        with _os_errors(key):
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise ObjectNotFound(f"no object at {key!r}: not a regular file")
            if max_bytes is not None and before.st_size > max_bytes:
                raise ObjectTooLarge(key, before.st_size, max_bytes)
            chunks = []  # O_NONBLOCK changes nothing for a regular file: read to its end
            while chunk := os.read(fd, max(before.st_size, 1 << 16)):
                chunks.append(chunk)
            data = b"".join(chunks)
            after = os.fstat(fd)
    finally:
        os.close(fd)
    # Unchanged while we read (same inode, size, mtime): a cached hash still describes it.
    etag = etags.get(signature(after)) if signature(before) == signature(after) else None
    if etag is None or len(data) != after.st_size:
        etag = hashlib.md5(data).hexdigest()  # noqa: S324 - MD5 is S3's ETag, not a security hash
        etags.put(signature(after), etag)
    return Blob(ObjectInfo(key, len(data), etag, after.st_mtime), data)


def _sorted_files(
    directory: Path, base: str, prefix: str, start_after: str | None
) -> Iterator[tuple[str, Path]]:
    """(key, path) of the files under ``directory`` in S3 key order, lazily.

    A folder ``d`` sorts as ``d/`` among its siblings: every key inside it starts with that, so
    visiting the siblings in that order yields keys in order ("a-b" before "a/b" before "a0").
    Folders that cannot hold a wanted key (outside ``prefix``, or all before ``start_after``)
    are not entered. Linked folders are not followed, as with ``os.walk``.
    """
    entries: list[tuple[str, bool]] = []
    try:
        scan = os.scandir(directory)
    except OSError:
        return  # vanished or unreadable: skipped, as os.walk does
    with scan:
        for entry in scan:
            if not base and entry.name == TEMP_DIR_NAME:
                continue
            if entry.is_dir():
                if not entry.is_symlink():
                    entries.append((f"{base}{entry.name}/", True))
            else:
                entries.append((base + entry.name, False))
    entries.sort()
    for key, is_dir in entries:
        if is_dir:
            if not (key.startswith(prefix) or prefix.startswith(key)):
                continue
            if start_after is not None and key <= start_after and not start_after.startswith(key):
                continue  # every key in there sorts before start_after
            yield from _sorted_files(directory / key[len(base) : -1], key, prefix, start_after)
        elif key.startswith(prefix) and (start_after is None or key > start_after):
            yield key, directory / key[len(base) :]


@contextmanager
def _os_errors(key: str) -> Iterator[None]:
    """Translate ``OSError`` into the storage error hierarchy."""
    try:
        yield
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise ObjectNotFound(f"no object at {key!r}") from exc
    except PermissionError as exc:
        raise AccessDenied(f"permission denied for {key!r}: {exc.strerror}") from exc
    except OSError as exc:
        raise TransientStorageError(f"local I/O error for {key!r}: {exc}") from exc
