"""The two object stores, primary and replica, each configured on its own.

``file:///path`` is a local folder: writes go to a temporary file that is fsynced and renamed into
place, so an object is either absent or complete, and durable once ``put`` returns. ``s3://bucket``
goes through django-storages' S3Storage (boto3) with the store's own endpoint, region and
credentials; uploads are streamed (multipart above a threshold) and downloads read the response
body as it arrives, so no whole object is ever held in memory.

The stores move opaque bytes; encryption happens before (studies.archive.objects).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol
from urllib.parse import parse_qs, unquote, urlparse
from urllib.request import url2pathname

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from studies.archive.errors import ObjectMissing, StorageFull, StorageUnavailable

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from botocore.response import StreamingBody

STORE_NAMES = ("primary", "replica")
# errno values that mean "no room left" rather than "unreachable".
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# S3-compatible servers that run on disks of their own say "full" with these codes (MinIO, Ceph).
S3_FULL_CODES = frozenset({"XMinioStorageFull", "InsufficientStorage", "QuotaExceeded"})
COPY_CHUNK = 1024 * 1024
# Our keys are "clinics/<uuid>/objects/<uuid>" and the like: plain segments, no "..", no leading "/".
_KEY_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")
_TEMP_PREFIX = ".upload-"


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def key_check(key: str) -> str:
    """Refuse keys that could escape a folder or mean different things on different stores."""
    if not isinstance(key, str) or len(key) > 1024 or not _KEY_RE.match(key) or "/../" in f"/{key}/":
        raise ValueError(f"Invalid object key {key!r}.")
    return key


class ObjectStore:
    """What both kinds of store offer; every failure is StorageUnavailable or ObjectMissing."""

    name: str
    url: str

    def put(self, key: str, fileobj: Readable, *, folder_sync: bool = True) -> int:
        """Store everything read from ``fileobj`` under ``key``; durable on return. Returns the byte count.

        ``folder_sync=False`` (local folders only; S3 is durable on return either way) leaves the new
        name's folder entry to :meth:`folders_sync`: a batch then pays one folder fsync, not one per
        object. The object is durable only once that returns.
        """
        raise NotImplementedError

    def folders_sync(self, keys: Iterable[str]) -> None:
        """Make durable the names of objects put with ``folder_sync=False``; nothing to do on S3."""

    def open(self, key: str) -> BinaryIO:
        """Open the object for streamed reading. Raises ObjectMissing if there is none."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Delete the object; deleting an absent object is not an error."""
        raise NotImplementedError

    def size(self, key: str) -> int:
        raise NotImplementedError

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield the keys that start with ``prefix``."""
        raise NotImplementedError

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """Yield (key, stored size) for the keys that start with ``prefix`` (S3 lists sizes for free)."""
        for key in self.list(prefix):
            with contextlib.suppress(ObjectMissing):
                yield key, self.size(key)

    def check(self) -> None:
        """Raise StorageUnavailable unless the store is reachable and writable."""
        raise NotImplementedError

    def free_bytes(self) -> int | None:
        """Free space left in the store, or None when it has no fixed size (S3)."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class LocalStore(ObjectStore):
    """A local folder; keys map to paths below it."""

    def __init__(self, *, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.url = root.as_uri()

    def path(self, key: str) -> Path:
        return self.root.joinpath(*key_check(key).split("/"))

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError:
            raise
        except OSError as exc:
            if exc.errno in NO_SPACE_ERRNOS:
                raise StorageFull(f"The {self.name} store is full; nothing was stored. Retry later.") from exc
            raise StorageUnavailable(
                f"The {self.name} store could not {action}: {exc.strerror or type(exc).__name__}."
            ) from exc

    def put(self, key: str, fileobj: Readable, *, folder_sync: bool = True) -> int:
        target = self.path(key)
        with self._errors("create a folder"):
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=_TEMP_PREFIX)
        written = 0
        try:
            with os.fdopen(handle, "wb") as out:
                while True:
                    # Errors of the source (a failed decryption, a broken upload) pass through as they are.
                    chunk = fileobj.read(COPY_CHUNK)
                    if not chunk:
                        break
                    with self._errors("write"):
                        out.write(chunk)
                    written += len(chunk)
                with self._errors("write"):
                    out.flush()
                    os.fsync(out.fileno())
            with self._errors("write"):
                # The file's bytes are on disk before it takes its name: a crash leaves either no object
                # or a whole one, never a short file under a real key.
                os.replace(temp_name, target)
                if folder_sync:
                    _fsync_dir(target.parent)
        except BaseException:
            try:
                os.unlink(temp_name)
            except FileNotFoundError:
                pass
            raise
        return written

    def folders_sync(self, keys: Iterable[str]) -> None:
        with self._errors("write"):
            for folder in sorted({self.path(key).parent for key in keys}):
                _fsync_dir(folder)

    def open(self, key: str) -> BinaryIO:
        try:
            with self._errors("read"):
                return _LocalReader(self.path(key).open("rb"), self.name)  # type: ignore[return-value]
        except FileNotFoundError:
            raise ObjectMissing(f"The {self.name} store has no object {key}.", key=key) from None

    def exists(self, key: str) -> bool:
        with self._errors("read"):
            return self.path(key).is_file()

    def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            with self._errors("delete"):
                path.unlink()
                _fsync_dir(path.parent)
        except FileNotFoundError:
            pass

    def size(self, key: str) -> int:
        try:
            with self._errors("read"):
                return self.path(key).stat().st_size
        except FileNotFoundError:
            raise ObjectMissing(f"The {self.name} store has no object {key}.", key=key) from None

    def list(self, prefix: str = "") -> Iterator[str]:
        # Walk only the deepest folder the prefix names, then filter by the full prefix like S3 does.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root.joinpath(*key_check(folder).split("/")) if folder else self.root
        if not base.is_dir():
            return
        with self._errors("list"):
            for directory, subdirs, files in os.walk(base):
                subdirs.sort()
                for filename in sorted(files):
                    if filename.startswith(_TEMP_PREFIX):
                        continue
                    key = Path(directory, filename).relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        yield key

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        # As list(), with one stat per file and no Path objects: a rebuild lists millions of objects.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = os.path.join(self.root, *key_check(folder).split("/")) if folder else str(self.root)
        if not os.path.isdir(base):
            return
        root_length = len(str(self.root)) + 1
        with self._errors("list"):
            for directory, subdirs, files in os.walk(base):
                subdirs.sort()
                relative = directory[root_length:].replace(os.sep, "/")
                for filename in sorted(files):
                    if filename.startswith(_TEMP_PREFIX):
                        continue
                    key = f"{relative}/{filename}" if relative else filename
                    if not key.startswith(prefix):
                        continue
                    try:
                        size = os.stat(os.path.join(directory, filename)).st_size
                    except FileNotFoundError:
                        continue  # deleted while listed
                    yield key, size

    def free_bytes(self) -> int | None:
        with self._errors("be reached"):
            self.root.mkdir(parents=True, exist_ok=True)
            return shutil.disk_usage(self.root).free

    def check(self) -> None:
        with self._errors("be reached"):
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise StorageUnavailable(f"The {self.name} store's folder is not writable.")


def _fsync_dir(path: Path) -> None:
    """Make a rename or unlink durable: the directory entry must reach the disk too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LocalReader(io.RawIOBase):
    """A local file whose read errors surface as StorageUnavailable, like S3's."""

    def __init__(self, handle: io.BufferedReader, store_name: str) -> None:
        super().__init__()
        self._handle = handle
        self._store_name = store_name
        # Reads are clamped to what the file holds: asking a buffered file for a whole segment (1 MiB)
        # when 0.5 MB remain makes it allocate (and page in) the full size and then shrink it.
        self._size = os.fstat(handle.fileno()).st_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def size_left(self) -> int:
        """The bytes between the current position and the end of the file (a reader sizes its buffer by it)."""
        return self._size - self._handle.tell()

    def readinto(self, buffer: WriteableBuffer) -> int:
        try:
            return self._handle.readinto(buffer)
        except OSError as exc:
            raise StorageUnavailable(f"The {self._store_name} store could not read: {exc.strerror}.") from exc

    def read(self, size: int = -1) -> bytes:
        try:
            if size is not None and size > 0:
                size = max(min(size, self._size - self._handle.tell()), 1)
            return self._handle.read(size)
        except OSError as exc:
            raise StorageUnavailable(f"The {self._store_name} store could not read: {exc.strerror}.") from exc

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
        super().close()


class S3Store(ObjectStore):
    """An S3 bucket (or an S3-compatible endpoint) through django-storages' S3Storage."""

    # Multipart above 8 MiB, in 8 MiB parts, at most 2 parts in flight and 2 buffered: an upload
    # holds about 40 MiB at worst, whatever the object size; 10,000 parts allow objects up to 80 GB.
    PART_SIZE = 8 * 1024 * 1024

    def __init__(
        self,
        *,
        name: str,
        bucket: str,
        access_key: str = "",
        secret_key: str = "",
        options: dict[str, str] | None = None,
    ) -> None:
        from botocore.config import Config
        from storages.backends.s3 import S3Storage

        options = dict(options or {})
        self.name = name
        self.bucket_name = bucket
        self.url = f"s3://{bucket}"
        prefix = options.pop("location", "").strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        client_config = Config(
            connect_timeout=float(options.pop("connect_timeout", 5)),
            read_timeout=float(options.pop("read_timeout", 60)),
            retries={"max_attempts": int(options.pop("max_attempts", 4)), "mode": "standard"},
            s3={"addressing_style": options.pop("addressing_style", "auto")},
            signature_version=options.pop("signature_version", None) or "s3v4",
        )
        storage_options: dict[str, object] = {
            "bucket_name": bucket,
            "endpoint_url": options.pop("endpoint_url", None) or None,
            "region_name": options.pop("region_name", None) or None,
            "client_config": client_config,
            "file_overwrite": True,
            "querystring_auth": False,
            "default_acl": None,
        }
        if "verify" in options:
            storage_options["verify"] = options.pop("verify").lower() not in {"0", "false", "no"}
        if options:
            raise ImproperlyConfigured(f"Unknown option(s) in the {name} store URL: {', '.join(sorted(options))}.")
        if access_key or secret_key:
            # Each store has its own credentials; the process-wide AWS_* variables are not consulted then.
            storage_options.update(access_key=access_key, secret_key=secret_key)
        self.storage = S3Storage(**storage_options)
        self._client: Any = None
        self._client_lock = threading.Lock()

    @property
    def client(self) -> Any:  # a botocore client: its methods are made at run time from the service model
        # One client for every thread of the process (botocore clients are thread-safe): S3Storage keeps
        # a boto3 session and resource per thread, about 0.1 s of CPU to make, which every new thread
        # (replication copies, read-ahead) paid again.
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    made = self.storage.connection.meta.client
                    # Last among the handlers of every S3 call, so after botocore's own that adds it.
                    made.meta.events.register_last("before-call.s3", _no_continue_for_whole_objects)
                    self._client = made
                client = self._client
        return client

    def _key(self, key: str) -> str:
        return self.prefix + key_check(key)

    @contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except Boto3Error as exc:
            # upload_fileobj wraps the underlying failure (S3UploadFailedError).
            raise StorageUnavailable(f"The {self.name} store did not accept the upload ({exc}).") from exc
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if key is not None and code in {"NoSuchKey", "404", "NotFound"}:
                raise ObjectMissing(f"The {self.name} store has no object {key}.", key=key) from None
            if code in S3_FULL_CODES:
                raise StorageFull(f"The {self.name} store is full; nothing was stored. Retry later.") from exc
            raise StorageUnavailable(f"The {self.name} store refused the request ({code or 'error'}).") from exc
        except (BotoCoreError, OSError) as exc:
            raise StorageUnavailable(f"The {self.name} store cannot be reached ({type(exc).__name__}).") from exc

    def put(self, key: str, fileobj: Readable, *, folder_sync: bool = True) -> int:
        counter = _CountingReader(fileobj)
        # An object smaller than one part (nearly every DICOM instance) is one PutObject of bytes already
        # read: s3transfer would start a transfer manager and its threads for each, which cost more CPU
        # than the request (replication copies hundreds of objects a second). A source error raises here.
        head = counter.read(self.PART_SIZE)
        if len(head) < self.PART_SIZE:
            with self._errors():
                self.client.put_object(Bucket=self.bucket_name, Key=self._key(key), Body=head)
            return counter.count
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=self.PART_SIZE,
            multipart_chunksize=self.PART_SIZE,
            max_concurrency=2,
            preferred_transfer_client="classic",
        )
        config.max_in_memory_upload_chunks = 2
        try:
            with self._errors():
                # s3transfer aborts an unfinished multipart upload on failure: no partial object remains.
                self.client.upload_fileobj(_HeadFirst(head, counter), self.bucket_name, self._key(key), Config=config)
        except StorageUnavailable:
            if counter.error is not None:
                # The source failed (a decryption error, a broken upload), not the store: say so.
                raise counter.error from None
            raise
        return counter.count

    def open(self, key: str) -> BinaryIO:
        with self._errors(key):
            response = self.client.get_object(Bucket=self.bucket_name, Key=self._key(key))
        return io.BufferedReader(_S3Body(response["Body"], self), COPY_CHUNK)

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectMissing:
            return False
        return True

    def delete(self, key: str) -> None:
        with self._errors():
            self.client.delete_object(Bucket=self.bucket_name, Key=self._key(key))

    def size(self, key: str) -> int:
        with self._errors(key):
            return int(self.client.head_object(Bucket=self.bucket_name, Key=self._key(key))["ContentLength"])

    def list(self, prefix: str = "") -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        with self._errors():
            for page in paginator.paginate(Bucket=self.bucket_name, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    yield item["Key"][len(self.prefix) :]

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        paginator = self.client.get_paginator("list_objects_v2")
        with self._errors():
            for page in paginator.paginate(Bucket=self.bucket_name, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    yield item["Key"][len(self.prefix) :], int(item["Size"])

    def check(self) -> None:
        with self._errors():
            self.client.head_bucket(Bucket=self.bucket_name)


def _no_continue_for_whole_objects(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
    """Send a single PutObject's body without asking for "100 Continue" first.

    botocore asks before every body it is given as a file. Our PutObject bodies are at most one part,
    already in memory, so waiting for the endpoint's go-ahead only adds a round trip to each write (to a
    synchronous replica write's latency above all). Multipart parts still ask, as AWS's own SDKs do for
    large bodies.
    """
    if model.name == "PutObject":
        params["headers"].pop("Expect", None)


class _HeadFirst:
    """The bytes already read from a source, then the rest of it (a stream, as boto3 sees it)."""

    def __init__(self, head: bytes, rest: Readable) -> None:
        self._head: bytes | None = head
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        head, self._head = self._head, None
        if head is None:
            return self._rest.read(size)
        if size is None or size < 0:
            return head + self._rest.read(-1)
        if len(head) > size:
            self._head = head[size:]
            return head[:size]
        # s3transfer asks for one part, which the head is: handed over without a copy.
        return head if len(head) == size else head + self._rest.read(size - len(head))


class _CountingReader:
    """Count what boto3 reads; hides seek/tell so boto3 treats the source as a stream."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self.count = 0
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        # s3transfer takes one read as one whole part, and S3 refuses parts under 5 MiB, so fill
        # the request completely (our encrypting source returns a segment at a time).
        parts: list[bytes] = []
        wanted = size if size is not None and size >= 0 else None
        got = 0
        try:
            while wanted is None or got < wanted:
                chunk = self._source.read(-1 if wanted is None else wanted - got)
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
        except BaseException as exc:
            self.error = exc
            raise
        self.count += got
        return parts[0] if len(parts) == 1 else b"".join(parts)


class _S3Body(io.RawIOBase):
    """An S3 response body read as it arrives; network failures become StorageUnavailable."""

    def __init__(self, body: StreamingBody, store: S3Store) -> None:
        super().__init__()
        self._body = body
        self._store = store

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        try:
            chunk = self._body.read(len(view))
        except Exception as exc:  # noqa: BLE001 - urllib3 and botocore raise many types for one failure
            raise StorageUnavailable(
                f"The {self._store.name} store broke off a download ({type(exc).__name__})."
            ) from exc
        view[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def store_from_url(*, name: str, url: str, access_key: str = "", secret_key: str = "") -> ObjectStore:
    """Build a store from ``file:///path`` or ``s3://bucket?endpoint_url=...&region_name=...``."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in {"", "localhost"}:
            raise ImproperlyConfigured(f"The {name} store URL must be file:///absolute/path.")
        return LocalStore(name=name, root=Path(url2pathname(unquote(parsed.path))))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ImproperlyConfigured(f"The {name} store URL must name a bucket: s3://bucket?...")
        options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        path = parsed.path.strip("/")
        if path:
            options.setdefault("location", path)
        return S3Store(name=name, bucket=parsed.netloc, access_key=access_key, secret_key=secret_key, options=options)
    raise ImproperlyConfigured(f"The {name} store URL must start with file:// or s3://.")


_cache: dict[tuple[str, str, str, str], ObjectStore] = {}
_cache_lock = threading.Lock()


def get_store(name: str) -> ObjectStore:
    """Return the "primary" or "replica" store as currently configured in settings."""
    if name not in STORE_NAMES:
        raise ValueError(f"Unknown store {name!r}; expected one of {STORE_NAMES}.")
    prefix = name.upper()
    url = getattr(settings, f"{prefix}_STORE_URL")
    access_key = getattr(settings, f"{prefix}_STORE_ACCESS_KEY_ID", "") or ""
    secret_key = getattr(settings, f"{prefix}_STORE_SECRET_ACCESS_KEY", "") or ""
    # Settings can change (tests, reconfiguration); reuse the store (and its boto3 session) only
    # while they stay the same.
    cache_key = (name, url, access_key, secret_key)
    with _cache_lock:
        store = _cache.get(cache_key)
        if store is None:
            store = store_from_url(name=name, url=url, access_key=access_key, secret_key=secret_key)
            if len(_cache) > 32:
                _cache.clear()
            _cache[cache_key] = store
        return store
