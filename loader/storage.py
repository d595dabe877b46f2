"""Where shards live: a local folder (path or ``file://``) or an S3 prefix (``s3://bucket/prefix``).

A store reads the index and hands out a shard's bytes as a uint8 numpy array, checked against the
index: size always, sha256 on download and on a process's first use of a local shard (``verify``).

S3 settings come from the standard AWS environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``) and
from ``storage_options`` spelled as for fsspec/s3fs (``key``, ``secret``, ``token``, ``endpoint_url``,
``client_kwargs={"region_name": ...}``), so the same dict serves our loader and ``s3fs``/``zarr``.
Objects are fetched with one streaming GET of a presigned URL (botocore signs it; a pooled urllib3
connection fetches it), read straight into a preallocated buffer and hashed as it arrives: on moto's
loopback server botocore's GET measured 1.1 GB/s against 0.7-0.8 GB/s for s3fs ``cat_file`` or
``open().read()`` of the same 8 MB objects, and the presigned path saves botocore's 0.5-0.7 ms per
request (`bench loader` keeps the comparison honest).
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from meg2fmri.shards.commit import write_atomic
from meg2fmri.shards.errors import InputError, ShardIntegrityError, ShardReadError
from meg2fmri.shards.index import INDEX_NAME, ShardEntry, ShardIndex, check_shard, read_index

from .buffers import BufferPool

READ_CHUNK = 1 << 20  # bytes per socket read; each is hashed while the next one arrives
_HASHERS: dict[int, ThreadPoolExecutor] = {}


def _hasher() -> ThreadPoolExecutor:
    """This process's hashing thread (a pool inherited through fork() has no thread behind it)."""
    pid = os.getpid()
    if pid not in _HASHERS:
        _HASHERS[pid] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
    return _HASHERS[pid]


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    """How shards are fetched and checked (the same for every backend)."""

    storage_options: dict = field(default_factory=dict)  # fsspec/s3fs-style S3 options
    verify: bool = True  # sha256 of each local/cached shard on this process's first use
    retries: int = 4  # extra attempts after a failed S3 request
    backoff_s: float = 0.5  # first wait between attempts; doubles each time
    cache_dir: str | None = None  # keep downloaded shards here (shared by DataLoader workers)
    cache_limit_bytes: int | None = None  # evict least recently used cached shards beyond this


class LocalStore:
    """Shards in a local folder, memory-mapped (page-cached reads, nothing copied until a batch)."""

    def __init__(self, root: Path, config: StoreConfig):
        self.root, self.config = Path(root), config
        self._verified: set[str] = set()

    @property
    def url(self) -> str:
        return str(self.root)

    def read_index(self) -> ShardIndex:
        return read_index(self.root)

    def read_file(self, name: str) -> bytes:
        """A file beside the index (e.g. the volume targets' ``mask.nii.gz``)."""
        folder = self.root if self.root.is_dir() else self.root.parent
        try:
            return (folder / name).read_bytes()
        except FileNotFoundError:
            raise ShardIntegrityError(f"{folder / name}: listed in the index but missing; re-run "
                                      "`ingest`") from None

    def verified(self, entry: ShardEntry) -> bool:
        """Whether this process has checked the shard's sha256."""
        return entry.sha256 in self._verified

    def trust(self, entry: ShardEntry) -> None:
        """Take the shard's sha256 as checked (another process of the same loader hashed the file)."""
        self._verified.add(entry.sha256)

    def shard(self, entry: ShardEntry) -> np.ndarray:
        path = self.root / entry.name
        return map_checked(path, entry, verify=self.config.verify and entry.sha256 not in self._verified,
                           verified=self._verified)


def map_checked(path: Path, entry: ShardEntry, *, verify: bool, verified: set[str]) -> np.ndarray:
    """``path`` memory-mapped after the index's checks (sha256 too when ``verify``)."""
    check_shard(path, entry, digest=verify)
    if verify:
        verified.add(entry.sha256)
    return np.memmap(path, dtype=np.uint8, mode="r")


class S3Store:
    """Shards under an S3 prefix; the index is ``<prefix>/index.json`` (or the ``.json`` URL given)."""

    def __init__(self, url: str, config: StoreConfig):
        parsed = urlparse(url)
        if not parsed.netloc:
            raise InputError(f"{url}: an S3 URL needs a bucket, e.g. s3://my-bucket/shards")
        self.bucket, path = parsed.netloc, parsed.path.strip("/")
        if path.endswith(".json"):
            self.prefix, self.index_key = path.rpartition("/")[0], path
        else:
            self.prefix, self.index_key = path, f"{path}/{INDEX_NAME}".lstrip("/")
        self.config = config
        self._client, self._pid = None, None
        self._http, self._http_pid = None, None
        self._verified: set[str] = set()
        self.etags: dict[str, str | None] = {}  # key -> ETag of its last GET
        self.hashed: dict[str, str] = {}  # key -> ETag whose bytes matched the index's sha256

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def __getstate__(self):  # clients do not survive pickling or fork: rebuilt per process
        return {**self.__dict__, "_client": None, "_pid": None, "_http": None, "_http_pid": None}

    def client(self):
        if self._client is None or self._pid != os.getpid():
            self._client, self._pid = s3_client(self.config.storage_options), os.getpid()
        return self._client

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def read_index(self) -> ShardIndex:
        import json

        data, _ = self.get(self.index_key, None)
        try:
            return ShardIndex.from_json(json.loads(bytes(data)), source=f"s3://{self.bucket}/{self.index_key}")
        except ValueError as err:
            raise ShardIntegrityError(f"s3://{self.bucket}/{self.index_key}: not a valid index "
                                      f"({err})") from None

    def read_file(self, name: str) -> bytes:
        """An object beside the index (e.g. the volume targets' ``mask.nii.gz``)."""
        return bytes(self.get(self.key(name), None)[0])

    def get(self, key: str, size: int | None, known_etag: str | None = None) -> tuple[np.ndarray, str | None]:
        """The object's bytes and sha256, retried with exponential backoff; ``ShardReadError`` after the
        last try. The hash is computed as the bytes arrive (hashlib releases the GIL), hiding its cost;
        it is skipped (None) when the object's ETag is ``known_etag``: the same object version whose
        bytes this process has already hashed (S3 gives an overwritten object a new ETag)."""
        from botocore.exceptions import ClientError

        url, wait, last = f"s3://{self.bucket}/{key}", self.config.backoff_s, None
        for attempt in range(self.config.retries + 1):
            try:
                return self._get_once(key, size, known_etag)
            except ShardIntegrityError:  # a missing or wrong-sized object: no retry will change it
                raise
            except ClientError as err:
                code = err.response.get("Error", {}).get("Code", "")
                if code in ("NoSuchKey", "404", "NoSuchBucket"):
                    raise ShardIntegrityError(f"{url}: no such object ({code}); upload the shards and "
                                              f"their index.json, or fix the URL") from None
                if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                    raise ShardReadError(f"{url}: access denied ({code}); check AWS credentials") from None
                last = err
            except (OSError, ShardReadError) as err:
                last = err
            except Exception as err:  # botocore/urllib3 connection errors have no common base
                if "botocore" not in type(err).__module__ and "urllib3" not in type(err).__module__:
                    raise
                last = err
            if attempt < self.config.retries:
                time.sleep(wait)
                wait *= 2
        raise ShardReadError(f"{url}: could not be read after {self.config.retries + 1} attempts "
                             f"({type(last).__name__}: {last}); is the S3 endpoint reachable?")

    def _get_once(self, key: str, size: int | None, known_etag: str | None) -> tuple[np.ndarray, str | None]:
        """One GET. With credentials, a presigned URL fetched over a pooled urllib3 connection: the
        same request botocore would send, without its per-request machinery (0.5-0.7 ms a request
        against moto here, a third of a 660 kB shard's time); anonymous access goes through botocore."""
        from botocore.exceptions import NoCredentialsError

        params = {"Bucket": self.bucket, "Key": key}
        try:
            url = self.client().generate_presigned_url("get_object", Params=params, ExpiresIn=3600)
        except NoCredentialsError:
            response = self.client().get_object(**params)
            etag = response.get("ETag")
            self.etags[key] = etag
            try:
                return self._read_body(key, response["Body"]._raw_stream, int(response["ContentLength"]),
                                       size, known_etag is None or etag != known_etag)
            except BaseException:
                response["Body"].close()  # a body left unread: do not hand its connection back
                raise
        response = self._pool().request("GET", url, preload_content=False, retries=False, redirect=False)
        try:
            if response.status != 200:
                self._raise_for_status(key, response)
            etag = response.headers.get("ETag")
            self.etags[key] = etag
            return self._read_body(key, response, int(response.headers["Content-Length"]), size,
                                   known_etag is None or etag != known_etag)
        except BaseException:
            response.close()  # a body left unread: close the connection rather than reuse it
            raise
        finally:
            response.release_conn()

    def _raise_for_status(self, key: str, response) -> None:
        url, body = f"s3://{self.bucket}/{key}", response.data[:300].decode("utf-8", "replace")
        if response.status == 404:
            raise ShardIntegrityError(f"{url}: no such object (404); upload the shards and their "
                                      "index.json, or fix the URL")
        if response.status == 403:
            raise ShardReadError(f"{url}: access denied (403); check AWS credentials")
        raise OSError(f"{url}: HTTP {response.status}: {body}")  # 5xx, throttling: retried

    def _pool(self):
        import urllib3

        if self._http is None or self._http_pid != os.getpid():
            timeout = urllib3.Timeout(connect=5, read=30)
            self._http, self._http_pid = urllib3.PoolManager(maxsize=16, timeout=timeout), os.getpid()
        return self._http

    def _read_body(self, key: str, raw, length: int, size: int | None,
                   hashing: bool = True) -> tuple[np.ndarray, str | None]:
        if size is not None and length != size:
            raise ShardIntegrityError(f"s3://{self.bucket}/{key}: {length} bytes, the index says {size}")
        buf = body_pool().take(length)  # reused: a fresh 50-MB buffer costs as much as its download
        view, got, digest = memoryview(buf), 0, hashlib.sha256()
        hashed = []  # one hashing thread, fed in order, runs while the next chunk arrives
        try:
            while got < length:
                n = raw.readinto(view[got:got + READ_CHUNK])
                if not n:
                    raise ShardReadError(f"s3://{self.bucket}/{key}: connection ended after {got} "
                                         f"of {length} bytes")
                if hashing:
                    hashed.append(_hasher().submit(digest.update, view[got:got + n]))
                got += n
        finally:
            for future in hashed:
                future.result()
        return buf, digest.hexdigest() if hashing else None

    def shard(self, entry: ShardEntry) -> np.ndarray:
        cache = self.config.cache_dir
        if cache is not None:
            path = Path(cache) / f"{entry.sha256}.tar"
            if path.exists():
                os.utime(path)  # least-recently-used order for eviction
                first_use = entry.sha256 not in self._verified
                return map_checked(path, entry, verify=self.config.verify and first_use,
                                   verified=self._verified)
        key = self.key(entry.name)
        known = self.hashed.get(key)  # (etag) of this shard's bytes already hashed in this process
        buf, digest = self.get(key, entry.bytes, known)
        if digest is not None:  # None: the very object version hashed before (same ETag), size checked
            if digest != entry.sha256:
                raise ShardIntegrityError(f"s3://{self.bucket}/{key}: sha256 {digest[:12]}... does not match "
                                          f"the index ({entry.sha256[:12]}...): corrupt upload")
            if self.etags.get(key):
                self.hashed[key] = self.etags[key]
        if cache is not None:
            Path(cache).mkdir(parents=True, exist_ok=True)
            write_atomic(Path(cache) / f"{entry.sha256}.tar", buf.tobytes())
            self._verified.add(entry.sha256)
            evict(Path(cache), self.config.cache_limit_bytes)
        return buf


_BODY_POOLS: dict[int, BufferPool] = {}


def body_pool() -> BufferPool:
    """This process's pool of object-body buffers (see ``buffers.py``)."""
    if os.getpid() not in _BODY_POOLS:
        _BODY_POOLS[os.getpid()] = BufferPool()
    return _BODY_POOLS[os.getpid()]


def evict(cache: Path, limit: int | None) -> None:
    """Delete least recently used ``*.tar`` files until the folder holds at most ``limit`` bytes."""
    if limit is None:
        return
    files = []
    for path in cache.glob("*.tar"):
        try:
            stat = path.stat()
        except FileNotFoundError:  # another worker evicted it first
            continue
        files.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= limit:
            break
        path.unlink(missing_ok=True)  # an open memmap keeps its pages; only the name goes
        total -= size


def s3_client(options: dict):
    """A botocore S3 client from fsspec/s3fs-style options; anything unset falls back to AWS env vars."""
    import boto3
    from botocore.config import Config

    options = dict(options)
    client_kwargs = dict(options.pop("client_kwargs", {}))
    known = {"key": "aws_access_key_id", "secret": "aws_secret_access_key", "token": "aws_session_token",
             "endpoint_url": "endpoint_url"}
    for name, boto_name in known.items():
        if options.get(name) is not None:
            client_kwargs[boto_name] = options.pop(name)
    anon = bool(options.pop("anon", False))  # --anon: unsigned requests, as s3fs's anon=True
    if options:
        raise InputError(f"storage_options {sorted(options)} are not understood; use key, secret, token, "
                         f"endpoint_url, anon or client_kwargs")
    config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=30,
                    max_pool_connections=16)
    if anon:
        from botocore import UNSIGNED

        config = config.merge(Config(signature_version=UNSIGNED))
    return boto3.session.Session().client("s3", config=config, **client_kwargs)


def read_mask(store: LocalStore | S3Store, index: ShardIndex):
    """Volume targets' brain mask beside the index (a nibabel image), checked against its sha256."""
    import gzip
    import hashlib

    import nibabel as nib

    target = index.target
    data = store.read_file(target["mask"])
    if hashlib.sha256(data).hexdigest() != target["mask_sha256"]:
        raise ShardIntegrityError(f"{store.url}/{target['mask']}: does not match the index's sha256; "
                                  "re-run `ingest`")
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


def open_store(source: str | Path, config: StoreConfig | None = None) -> LocalStore | S3Store:
    """A store for a local folder / ``index.json`` path, a ``file://`` URL or an ``s3://`` URL."""
    config = config or StoreConfig()
    text = str(source)
    scheme = urlparse(text).scheme if "://" in text else ""
    if scheme == "s3":
        return S3Store(text, config)
    if scheme == "file":
        text = urlparse(text).path
    elif scheme:
        raise InputError(f"{source}: unsupported URL scheme {scheme!r}; use a local path, file:// or s3://")
    path = Path(text)
    if path.name.endswith(".json"):
        path = path.parent
    return LocalStore(path, config)
