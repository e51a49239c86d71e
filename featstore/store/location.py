"""Where a project's store lives: a local folder or an object-store URL, behind one small interface.

Everything that touches stored bytes (the split writer and reader, verification, probe files, the catalog
snapshot) goes through a `StoreLocation` and names objects by keys relative to the store's root
(`features.zarr/<model>/<dataset>/<split>/<version>/...`, `probes/...`). A local folder publishes files by
rename; an object store by single PUTs, which are atomic. Neither ever lists more than one split's folder.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import google_crc32c
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

from featstore.errors import FeatstoreError
from featstore.store.safe_paths import checked_key

# Throttling, 5xx answers and dropped connections are retried by botocore with backoff; a store that stays
# unreachable fails after MAX_ATTEMPTS tries (15-25 s); AWS_MAX_ATTEMPTS and AWS_RETRY_MODE override them.
MAX_ATTEMPTS = 5
CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 60
OBJECT_SCHEMES = ("s3",)  # the object stores featstore is tested with (conditional puts, ranged reads)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class StoreUnreachable(FeatstoreError):
    """The object store did not answer (after retries)."""


class StoreLocation(ABC):
    """The root of a store: keys are '/'-separated paths below it."""

    url: str

    @abstractmethod
    def zarr_store(self, key: str, read_only: bool) -> Store:
        """A zarr store rooted at `key` (a split's version folder)."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """The whole object, or None when there is none."""

    @abstractmethod
    def read_at_most(self, key: str, limit: int) -> bytes | None:
        """The object's first `limit` bytes (one ranged read), or None when there is none."""

    @abstractmethod
    def open(self, key: str) -> IO[bytes]:
        """A binary file object for streaming reads (FileNotFoundError when missing)."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Put an object whole: readers see the old bytes or the new, never a part."""

    @abstractmethod
    def create_bytes(self, key: str, data: bytes) -> bool:
        """Put an object only if there is none (a conditional put); False when one exists."""

    @abstractmethod
    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        """The object and a tag of its current version (an ETag), or None when there is none."""

    @abstractmethod
    def replace_bytes(self, key: str, data: bytes, tag: str) -> bool:
        """Put an object only if it is still the version `tag` names (a conditional put); False otherwise."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the object exists."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key below the folder `prefix`, recursively (empty when there is none)."""

    @abstractmethod
    def sizes(self, prefix: str) -> dict[str, int]:
        """Every key below the folder `prefix` with its size in bytes (what deleting the folder frees)."""

    @abstractmethod
    def children(self, prefix: str) -> list[str]:
        """The names of the entries directly inside the folder `prefix` (one level)."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Delete these objects (missing ones are ignored)."""

    @abstractmethod
    def copy(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Copy objects within the store (source key, destination key), without downloading where possible."""

    @abstractmethod
    def put_file(self, path: Path, key: str) -> None:
        """Upload a local file as one object, atomically."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> None:
        """Download an object to a local file."""

    def delete_folder(self, prefix: str) -> None:
        """Delete every key below the folder `prefix`."""
        self.delete(self.list(prefix))

    def put_folder(self, folder: Path, prefix: str) -> None:
        """Upload every file below a local folder, keeping relative paths."""
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.put_file(path, f"{prefix}/{path.relative_to(folder).as_posix()}")

    def describe(self, key: str) -> str:
        """A key as a user would type it (path or URL)."""
        return f"{self.url.rstrip('/')}/{key}"


class LocalLocation(StoreLocation):
    """A folder on a local (or shared) filesystem."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.url = str(self.root)

    def path(self, key: str) -> Path:
        """The file of a key (checked: a key read from a catalog or listing cannot leave the store's folder)."""
        return self.root / checked_key(key, "store key") if key else self.root

    def zarr_store(self, key: str, read_only: bool) -> Store:
        return LocalStore(self.path(key), read_only=read_only)

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def read_at_most(self, key: str, limit: int) -> bytes | None:
        try:
            with open(self.path(key), "rb") as handle:
                return handle.read(limit)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def open(self, key: str) -> IO[bytes]:
        return open(self.path(key), "rb")

    def _staged(self, key: str, data: bytes) -> Path:
        """`data` written and flushed to disk under a temporary name beside the key's file."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return Path(handle.name)

    def write_bytes(self, key: str, data: bytes) -> None:
        os.replace(self._staged(key, data), self.path(key))

    def create_bytes(self, key: str, data: bytes) -> bool:
        staged = self._staged(key, data)
        try:
            os.link(staged, self.path(key))  # fails when the target exists: the local conditional put
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(staged)

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        data = self.read_bytes(key)
        return None if data is None else (data, _content_tag(data))

    def replace_bytes(self, key: str, data: bytes, tag: str) -> bool:
        target = self.path(key)
        with open(target.with_name(f".{target.name}.lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # compare and put as one step, across processes of this filesystem
            current = self.read_bytes(key)
            if current is None or _content_tag(current) != tag:
                return False
            self.write_bytes(key, data)
            return True

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        folder = self.path(prefix)
        if not folder.is_dir():
            return []
        return sorted(f"{prefix}/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*") if p.is_file())

    def sizes(self, prefix: str) -> dict[str, int]:
        return {key: self.path(key).stat().st_size for key in self.list(prefix)}

    def children(self, prefix: str) -> list[str]:
        folder = self.path(prefix)
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def delete(self, keys: Iterable[str]) -> None:
        """Delete files and the folders they leave empty (a bucket has no empty folders either)."""
        for key in keys:
            path = self.path(key)
            path.unlink(missing_ok=True)
            for folder in path.parents:
                if folder == self.root or not folder.is_relative_to(self.root):
                    break
                try:
                    folder.rmdir()
                except OSError:  # not empty, or gone
                    break

    def delete_folder(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def copy(self, pairs: Iterable[tuple[str, str]]) -> None:
        for source, target in pairs:  # hard links: a repair copies a split without copying its bytes
            self.path(target).parent.mkdir(parents=True, exist_ok=True)
            os.link(self.path(source), self.path(target))

    def put_file(self, path: Path, key: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".{target.name}.staged")
        shutil.copyfile(path, staged)
        with open(staged, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(staged, target)

    def get_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path(key), path)


class ObjectLocation(StoreLocation):
    """A prefix in an object store reached through fsspec (`s3://bucket/prefix`, see `store_location`).

    Credentials and the endpoint come from the standard chain (AWS_* variables, profiles); none is stored."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.protocol = self.url.split("://", 1)[0]
        self._fs = None

    def __getstate__(self) -> dict:  # the filesystem object is rebuilt in each process
        return {"url": self.url, "protocol": self.protocol, "_fs": None}

    def options(self) -> dict:
        """fsspec options: for S3, botocore's retries with backoff and short connect timeouts, no listing cache
        (another machine may write meanwhile), and one request per read (more concurrency first asks each
        object's size)."""
        if self.protocol not in ("s3", "s3a"):
            return {}
        retries = {
            "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", MAX_ATTEMPTS)),
            "mode": os.environ.get("AWS_RETRY_MODE", "standard"),
        }
        options = {
            "use_listings_cache": False,
            "max_concurrency": 1,
            "config_kwargs": {"retries": retries, "connect_timeout": CONNECT_TIMEOUT_S, "read_timeout": READ_TIMEOUT_S},
        }
        if os.environ.get("AWS_ENDPOINT_URL"):
            options["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
        return options

    @property
    def fs(self):
        if self._fs is None:
            import fsspec

            self._fs, _ = fsspec.url_to_fs(self.url, **self.options())
        return self._fs

    def _path(self, key: str) -> str:
        root = self.url.split("://", 1)[1]
        return f"{root}/{checked_key(key, 'store key')}" if key else root

    def zarr_store(self, key: str, read_only: bool) -> Store:
        return FsspecStore.from_url(f"{self.url}/{key}", storage_options=self.options(), read_only=read_only)

    def read_bytes(self, key: str) -> bytes | None:
        with store_errors(self):
            try:
                return self.fs.cat_file(self._path(key))
            except FileNotFoundError:
                return None

    def read_at_most(self, key: str, limit: int) -> bytes | None:
        with store_errors(self):
            try:
                return self.fs.cat_file(self._path(key), start=0, end=limit)
            except FileNotFoundError:
                return None

    def open(self, key: str) -> IO[bytes]:
        with store_errors(self):
            return self.fs.open(self._path(key), "rb")

    def write_bytes(self, key: str, data: bytes) -> None:
        with store_errors(self):
            self.fs.pipe_file(self._path(key), data)

    def create_bytes(self, key: str, data: bytes) -> bool:
        with store_errors(self):
            try:
                self.fs.pipe_file(self._path(key), data, mode="create")
                return True
            except FileExistsError:
                return False
            except OSError as err:  # servers whose 412 s3fs does not map (seaweedfs): PreconditionFailed
                if _precondition_failed(err):
                    return False
                raise

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        """The ETag is read first: if the object changes before its bytes are read, a replace conditioned on
        that tag fails, which is the safe side."""
        with store_errors(self):
            try:
                tag = str(self.fs.info(self._path(key)).get("ETag") or "")
                return self.fs.cat_file(self._path(key)), tag
            except FileNotFoundError:
                return None

    def replace_bytes(self, key: str, data: bytes, tag: str) -> bool:
        with store_errors(self):
            try:
                self.fs.pipe_file(self._path(key), data, IfMatch=tag)
                return True
            except (FileNotFoundError, FileExistsError):
                return False
            except OSError as err:
                if _precondition_failed(err):
                    return False
                raise

    def exists(self, key: str) -> bool:
        with store_errors(self):
            return self.fs.isfile(self._path(key))

    def list(self, prefix: str) -> list[str]:
        root = self._path("")
        with store_errors(self):
            found = self.fs.find(self._path(prefix))
        return sorted(path[len(root) + 1 :] for path in found)

    def sizes(self, prefix: str) -> dict[str, int]:
        root = self._path("")
        with store_errors(self):
            found = self.fs.find(self._path(prefix), detail=True)
        return {path[len(root) + 1 :]: int(info.get("size") or 0) for path, info in sorted(found.items())}

    def children(self, prefix: str) -> list[str]:
        with store_errors(self):
            try:
                found = self.fs.ls(self._path(prefix), detail=False)
            except FileNotFoundError:
                return []
        return sorted(path.rstrip("/").rsplit("/", 1)[-1] for path in found)

    def delete(self, keys: Iterable[str]) -> None:
        paths = [self._path(key) for key in keys]
        if paths:
            with store_errors(self):
                self.fs.rm(paths)

    def copy(self, pairs: Iterable[tuple[str, str]]) -> None:
        with store_errors(self):
            for source, target in pairs:
                self.fs.copy(self._path(source), self._path(target))

    def put_file(self, path: Path, key: str) -> None:
        with store_errors(self):
            self.fs.put_file(str(path), self._path(key))

    def get_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with store_errors(self):
            self.fs.get_file(self._path(key), str(path))


def _content_tag(data: bytes) -> str:
    """A local file's version tag: the crc32c of its bytes."""
    return str(google_crc32c.value(data))


def _precondition_failed(err: OSError) -> bool:
    """Whether a refused write was a failed condition (the object exists), as the S3 error code says."""
    response = getattr(err.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code") == "PreconditionFailed"


def is_unreachable(err: BaseException) -> bool:
    """Whether an exception from an object-store client means the store could not be reached."""
    names = {cls.__name__ for cls in type(err).__mro__}
    return bool(
        names
        & {
            "EndpointConnectionError",
            "ConnectionClosedError",
            "ConnectTimeoutError",
            "ReadTimeoutError",
            "ClientConnectorError",
            "ServerDisconnectedError",
            "ConnectionRefusedError",
            "ConnectionResetError",
        }
    )


def unreachable(where: str, err: BaseException) -> StoreUnreachable:
    """The one line for a store that stayed unreachable (botocore has retried with backoff)."""
    return StoreUnreachable(
        f"the store {where} cannot be reached ({type(err).__name__}: "
        f"{' '.join(str(err).split())[:200]}); check the endpoint and network, then run "
        "the command again (it resumes where it stopped)"
    )


def as_store_error(err: BaseException, where: str) -> FeatstoreError | None:
    """An object-store client's failure as one line (unreachable, no credentials, access denied, no such
    bucket), or None when it is none of these."""
    names = {cls.__name__ for cls in type(err).__mro__}
    if is_unreachable(err):
        return unreachable(where, err)
    if names & {"NoCredentialsError", "PartialCredentialsError"}:
        return FeatstoreError(
            f"no credentials for the store {where}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment"
        )
    if isinstance(err, PermissionError):
        return FeatstoreError(
            f"access to the store {where} was denied ({' '.join(str(err).split())[:200]}); "
            "check the credentials and their permissions"
        )
    if isinstance(err, FileNotFoundError) and "bucket does not exist" in str(err).lower():
        return FeatstoreError(f"the bucket of the store {where} does not exist; create it first")
    return None


@contextmanager
def store_errors(location: StoreLocation) -> Iterator[None]:
    """Turn an object-store client's failure (see `as_store_error`) into one featstore error line."""
    try:
        yield
    except FeatstoreError:
        raise
    except Exception as err:
        mapped = as_store_error(err, location.url)
        if mapped is None:
            raise
        raise mapped from None


def store_location(url: str) -> StoreLocation:
    """A location from a folder path, a `file://` URL or an S3 URL (`s3://bucket/prefix`), checked here: only
    stores that persist (no `memory://`, `http://` or `zip://`), a valid bucket name, no query or fragment."""
    if not isinstance(url, str) or not url.strip() or _CONTROL.search(url):
        raise FeatstoreError(f"{url!r} is not a store folder or URL")
    if url.startswith("file://"):
        return LocalLocation(Path(url[len("file://") :] or "/").resolve())
    scheme = re.match(r"^([A-Za-z][\w+.-]+):", url)
    if scheme is None:
        return LocalLocation(Path(url).expanduser().resolve())
    if not url.startswith(f"{scheme.group(1)}://"):
        raise FeatstoreError(f"{url!r} is not a store URL: write it as s3://bucket/prefix (or give a folder)")
    if scheme.group(1).lower() not in OBJECT_SCHEMES:
        raise FeatstoreError(
            f"the store URL {url!r} cannot be used: give a folder or s3://bucket/prefix (other "
            "protocols, memory:// among them, are refused: they do not persist or are untested)"
        )
    rest = url.split("://", 1)[1]
    if "?" in rest or "#" in rest:
        raise FeatstoreError(f"the store URL {url!r} has a query or fragment; write it as s3://bucket/prefix")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise FeatstoreError(
            f"the store URL {url!r} needs a bucket name (3-63 lowercase letters, digits, dots "
            "and hyphens): s3://bucket/prefix"
        )
    prefix = prefix.rstrip("/")
    if prefix:
        checked_key(prefix, "the prefix of the store URL")
    return ObjectLocation(f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}")
