"""The one commit mechanism: how every output lands whole, in a local folder or under an S3 prefix.

A reader must never see half an output. Two kinds of step give that, on both backends:

- **one object** (a shard, the index, a run's pairs, the mask): ``put`` / ``open_atomic`` write it
  under a temporary name and rename it into place (local), or as one PUT or one multipart upload
  (S3: invisible until complete; an aborted upload leaves no object);
- **a group of objects** (a run's Zarr group): written at its final keys, then committed by one small
  last write (``cache.py``: the group's last attribute update). Readers trust only committed groups;
  a resumed writer deletes uncommitted ones (``remove``).

S3 has no rename, so nothing here renames on S3. Listings are never cached (``use_listings_cache``
off): a long-running driver sees what other nodes wrote. Objects are identified by ETag (or
VersionId) and size, never by modification time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import fsspec

from .errors import InputError, OutputNotWritableError

S3 = "s3://"


def is_remote(url: str | Path) -> bool:
    """Whether ``url`` is an ``s3://`` URL."""
    return str(url).startswith(S3)


def s3_filesystem(storage_options: dict | None = None, anon: bool | None = None):
    """An s3fs filesystem with no listing cache (``anon`` overrides the options' own)."""
    import s3fs

    options = dict(storage_options or {})
    if anon is not None:
        options["anon"] = anon
    options.setdefault("use_listings_cache", False)
    return s3fs.S3FileSystem(skip_instance_cache=True, **options)


class Location:
    """A local folder or an ``s3://bucket/prefix``: read, list, write atomically, remove.

    Paths passed to the methods are relative to the root, with ``/`` separators.
    """

    def __init__(self, url: str | Path, storage_options: dict | None = None, anon: bool | None = None):
        text = str(url)
        self.remote = is_remote(text)
        self.storage_options = dict(storage_options or {})
        self.anon = anon
        if self.remote:
            root = text[len(S3):].strip("/")
            if not root or root.startswith("/"):
                raise InputError(f"{text}: an S3 URL needs a bucket, e.g. s3://my-bucket/prefix")
            self.root = root
            self.fs = s3_filesystem(self.storage_options, anon)
        else:
            self.root = str(Path(text.removeprefix("file://")).absolute())
            self.fs = fsspec.filesystem("file")

    def __reduce__(self):  # filesystems are rebuilt in each process (Ray tasks, DataLoader workers)
        return (Location, (self.url, self.storage_options, self.anon))

    @property
    def url(self) -> str:
        return f"{S3}{self.root}" if self.remote else self.root

    def __str__(self) -> str:
        return self.url

    def path(self, rel: str = "") -> str:
        """The filesystem path of ``rel`` (``bucket/key`` on S3)."""
        return f"{self.root}/{rel}".rstrip("/") if rel else self.root

    def url_of(self, rel: str = "") -> str:
        return f"{S3}{self.path(rel)}" if self.remote else self.path(rel)

    # reading
    def exists(self, rel: str = "") -> bool:
        return self.fs.exists(self.path(rel))

    def is_dir(self, rel: str = "") -> bool:
        return self.fs.isdir(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url_of(rel)}: no such file") from None

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8-sig")

    def info(self, rel: str) -> dict:
        return self.fs.info(self.path(rel))

    def names(self, rel: str = "") -> list[str]:
        """Names directly inside ``rel`` (files and folders; none if it does not exist)."""
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path(rel), detail=False))
        except FileNotFoundError:
            return []

    def find(self, rel: str = "") -> dict[str, dict]:
        """Every object under ``rel`` (one recursive listing): relative path -> its info."""
        base = self.path(rel)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        return {p[len(self.root) + 1:]: info for p, info in found.items() if info.get("type") != "directory"}

    def stamp(self, rel: str, info: dict | None = None) -> dict:
        """What identifies the object's content without reading it: size and ETag or VersionId on S3,
        size and modification time for a local file (which has no content id short of a hash)."""
        info = info or self.info(rel)
        if self.remote:
            tag = info.get("VersionId") or info.get("ETag") or info.get("etag")
            return {"path": self.url_of(rel), "bytes": int(info["size"]), "etag": str(tag).strip('"')}
        return {"path": self.url_of(rel), "bytes": int(info["size"]),
                "mtime_ns": os.stat(self.path(rel)).st_mtime_ns}

    # writing: every object lands whole
    def put(self, rel: str, data: bytes) -> None:
        """``data`` at ``rel``, all or nothing."""
        with self.open_atomic(rel) as f:
            f.write(data)

    @contextlib.contextmanager
    def open_atomic(self, rel: str) -> Iterator:
        """A binary file for ``rel`` that appears only when the block exits without an error."""
        path = self.path(rel)
        if not self.remote:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
            try:
                with open(tmp, "wb") as f:
                    yield f
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            return
        f = self.fs.open(path, "wb")  # one PUT, or a multipart upload (invisible until complete)
        try:
            yield f
        except BaseException:
            f.autocommit = False  # close without completing; abort the parts already sent
            with contextlib.suppress(Exception):
                f.close()
            if getattr(f, "mpu", None):
                with contextlib.suppress(Exception):
                    f._abort_mpu()
            raise
        f.close()

    def check_writable(self, option: str = "--out") -> None:
        """Raise ``OutputNotWritableError`` naming ``option`` unless something can be written here, before
        any work starts. Locally the folder is created (with its parents) if missing, a probe file
        written and removed, and any folder created for the check removed again; on S3 a probe object is
        put and deleted. Nothing is left behind either way."""
        probe = f".meg2fmri-write-probe-{os.getpid()}"
        if self.remote:
            try:
                self.put(probe, b"")
                self.remove(probe)
            except Exception as err:  # botocore, aiohttp and s3fs raise many types
                raise OutputNotWritableError(
                    f"{option} {self.url}: cannot write there ({type(err).__name__}: {err}); check the "
                    "bucket name, the credentials and --endpoint-url") from None
            return
        path = Path(self.root)
        created = []
        try:
            missing = path
            while not missing.exists():
                created.append(missing)
                missing = missing.parent
            if not missing.is_dir():
                raise NotADirectoryError(f"{missing} is a file")
            path.mkdir(parents=True, exist_ok=True)
            (path / probe).write_bytes(b"")
            (path / probe).unlink()
        except OSError as err:
            raise OutputNotWritableError(
                f"{option} {self.root}: cannot write there ({err.strerror or err}); choose a folder you "
                "can write") from None
        finally:
            for folder in created:  # the deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def remove(self, rel: str) -> None:
        """Delete ``rel`` (an object or everything under a prefix); nothing if it is not there."""
        path = self.path(rel)
        if not self.remote:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.unlink(path)
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path, recursive=True)

    def remove_temporaries(self, rel: str = "") -> None:
        """Files a killed local writer left under temporary names (S3 has none: uploads are whole)."""
        if self.remote or not os.path.isdir(self.path(rel)):
            return
        for stale in Path(self.path(rel)).rglob(".*.tmp-*"):
            stale.unlink(missing_ok=True)

    def zarr_store(self, rel: str = "", read_only: bool = False):
        """A zarr 3 store at ``rel`` (local folder, or an fsspec store on S3)."""
        import zarr

        if not self.remote:
            return zarr.storage.LocalStore(self.path(rel), read_only=read_only)
        options = {**self.storage_options, "use_listings_cache": False}
        if self.anon is not None:
            options["anon"] = self.anon
        return zarr.storage.FsspecStore.from_url(self.url_of(rel), storage_options=options,
                                                 read_only=read_only)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the complete local folder ``tmp`` to ``final``; an old ``final`` is removed only after the
    move (a local folder written whole elsewhere: ``synth``'s dataset, the loader's Zarr export)."""
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` at the local ``path``, never half-written (``Location.put`` for one file)."""
    path = Path(path)
    Location(path.parent).put(path.name, data)
