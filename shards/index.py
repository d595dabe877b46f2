"""The shard index (``index.json``): every shard with its sample count, byte size and sha256,
the sample layout, the subject split, and the resolved ingest configuration.

Written last and atomically by ingest, so an index on disk always describes complete shards.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import IntegrityError, ShardIntegrityError
from .format import META_BYTES, TargetLayout, member_sizes, sample_stride
from .split import SPLITS

INDEX_NAME = "index.json"
FORMAT = "meg2fmri-shards"
# 3: targets other than slices (``target``: kind, shape, dtype); 2 (read as slice targets): four
# sets by subject and story (train, test, seen_story, seen_subject); 1 had train/held_out.
VERSION = 3
READABLE = (2, 3)
# the fMRI repetition time of every shard set written before the index recorded it (ds004078's and
# synth's; the target entry's ``tr`` since)
TR_BEFORE_RECORDED = 0.71


@dataclass(frozen=True, kw_only=True)
class FeatureSpec:
    """The index's ``features``: what each sample's ``meg`` vector holds."""

    kind: str  # "mean" (per-channel mean of an epoch, z-scored) | "bandpower"
    width: int  # floats per vector
    names: tuple[str, ...]  # one per element, e.g. "MEG0111" or "MEG0111:alpha"
    channels: tuple[str, ...] = ()  # the channels read, in their canonical order

    @classmethod
    def from_json(cls, obj: dict) -> FeatureSpec:
        return cls(kind=obj["kind"], width=obj["width"], names=tuple(obj["names"]),
                   channels=tuple(obj.get("channels") or ()))


@dataclass(frozen=True, kw_only=True)
class PairingSpec:
    """How ingest paired MEG with fMRI (the index's ``config.pairing``, as a reader needs it)."""

    pairing: str = "windows"  # "windows": an epoch every ``stride`` s; "paper": one pair per run
    features: str = "mean"
    target: str = "slice"
    stride: float | None = None  # s between epochs
    lag: float | None = None  # s from an epoch's start to its paired volume
    epoch: float | None = None  # s of MEG per sample
    size: int | None = None  # slice side, pixels
    slice: int | None = None  # the axial slice
    power: str = "log"  # band power: "log" | "linear"
    fir_lags: int = 0  # band power: N 1-s bins before each volume (0: one epoch)
    atlas: str | None = None  # parcels: the label image

    @classmethod
    def from_json(cls, obj: dict) -> PairingSpec:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in obj.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ShardEntry:
    """One shard in the index: its file, split, sample count, bytes, sha256 and first/last key."""
    name: str  # file name relative to the index's folder
    split: str
    count: int  # samples
    bytes: int
    sha256: str
    first_key: str
    last_key: str


@dataclass(frozen=True)
class ShardIndex:
    """``index.json``: every shard, the layout, target, split, features, runs and configuration."""
    dataset: dict  # name and fingerprint of the BIDS dataset the shards come from
    features: dict  # {"kind": "mean"|"bandpower", "width": int, "names": [...]}
    # {"kind": "slice"|"volume"|"parcels", "shape": [...], "dtype": "float32"|"float16", ...}: volume
    # adds the mask file, grid shape and affine, and float16's error; parcels the atlas and its labels
    target: dict
    # {"subjects": {"train": [...], "held_out": [...]}, "stories": {"train": [...], "held_out": [...]}}
    split: dict
    shards: list[ShardEntry]
    config: dict  # resolved ingest configuration
    runs: list[dict] = field(default_factory=list)  # per (subject, run): count, slice, warnings
    failed: list[dict] = field(default_factory=list)  # runs that could not be ingested (or were skipped)
    # groups of runs whose decoded MEG or BOLD are identical: {"data": "meg"|"bold", "runs", "sha256"}
    duplicates: list[dict] = field(default_factory=list)
    # the options the shards were made with, as asked for (compared when ingest runs again into the
    # same --out: other options are refused unless --overwrite)
    options: dict | None = None

    @property
    def target_layout(self) -> TargetLayout:
        return TargetLayout.from_json(self.target)

    @property
    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec.from_json(self.features)

    @property
    def pairing(self) -> PairingSpec:
        return PairingSpec.from_json(self.config.get("pairing", {}))

    @property
    def tr(self) -> float:
        """s: the fMRI repetition time of the targets (one for the whole index)."""
        return float(self.target.get("tr", TR_BEFORE_RECORDED))

    @property
    def image_size(self) -> int:
        """Side of slice targets (pixels); other targets have none."""
        if self.target["kind"] != "slice":
            raise ValueError(f"{self.target['kind']} targets have no image size")
        return self.target["shape"][0]

    def held_out(self, kind: str) -> list:
        """Held-out ``"subjects"`` or ``"stories"``."""
        return self.split[kind]["held_out"]

    def missing_runs(self) -> list[str]:
        """One line per run the ingest could not use (failed, or skipped as a duplicate), with why:
        what ``train`` and ``evaluate`` print and ``results.md`` names, so a partial dataset is seen."""
        lines = []
        for f in self.failed:
            name = f"sub-{f['subject']}_run-{f['run']}"
            split = f" ({f['split']})" if f.get("split") else ""
            lines.append(f"{name}{split}: {f['error'].removeprefix(f'{name}: ')}")
        return lines

    def count(self, split: str | None = None) -> int:
        return sum(s.count for s in self.shards if split is None or s.split == split)

    def layout(self) -> dict:
        """Member sizes and the fixed bytes per sample (for readers that compute offsets)."""
        width = self.features["width"]
        return {"members": member_sizes(width, self.target_layout), "meta_bytes": META_BYTES,
                "sample_stride": sample_stride(width, self.target_layout)}

    def to_json(self) -> dict:
        out = asdict(self)
        out = {"format": FORMAT, "version": VERSION, **out, "layout": self.layout(),
               "counts": {s: self.count(s) for s in SPLITS}}
        return out

    @classmethod
    def from_json(cls, obj: dict, source: str = "index") -> ShardIndex:
        if obj.get("format") != FORMAT or obj.get("version") not in READABLE:
            hint = (" (v1 split by subject only: re-run `ingest --from-cache` to split by story too)"
                    if obj.get("format") == FORMAT else "")
            raise IntegrityError(f"{source}: not a {FORMAT} v{VERSION} index "
                                 f"(format={obj.get('format')!r}, version={obj.get('version')!r}){hint}")
        if obj["version"] == 2:  # slice targets of float32, named by their side
            size = obj["image_size"]
            obj = {**obj, "target": {"kind": "slice", "shape": [size, size], "dtype": "float32"}}
        keys = ("dataset", "features", "target", "split", "config", "runs", "failed")
        fields = {k: obj[k] for k in keys} | {"duplicates": obj.get("duplicates", []),
                                              "options": obj.get("options")}
        return cls(shards=[ShardEntry(**s) for s in obj["shards"]], **fields)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """The sha256 of a file, read in 4-MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def index_bytes(index: ShardIndex) -> bytes:
    """The index as the bytes ``index.json`` holds."""
    return (json.dumps(index.to_json(), indent=1) + "\n").encode()


def read_index(path: Path) -> ShardIndex:
    """Read ``index.json`` (or the ``index.json`` inside a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_NAME
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise IntegrityError(f"{path}: no shard index here; run `ingest` first") from None
    except json.JSONDecodeError as err:
        raise IntegrityError(f"{path}: the index is not valid JSON ({err}); re-run `ingest`") from None
    return ShardIndex.from_json(obj, source=str(path))


def check_shard(path: Path, entry: ShardEntry, *, digest: bool = True) -> None:
    """Raise ``ShardIntegrityError`` unless the file at ``path`` has ``entry``'s size (and sha256)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ShardIntegrityError(f"{path}: shard listed in the index is missing; re-run `ingest`") from None
    if size != entry.bytes:
        raise ShardIntegrityError(f"{path}: {size} bytes, the index says {entry.bytes} (truncated or "
                                  "rewritten); re-run `ingest`")
    if digest:
        found = file_sha256(path)
        if found != entry.sha256:
            raise ShardIntegrityError(f"{path}: sha256 {found[:12]}... does not match the index "
                                      f"({entry.sha256[:12]}...): the shard is corrupt; re-run `ingest`")


def verify_shard(folder: Path, entry: ShardEntry) -> None:
    """Raise ``ShardIntegrityError`` unless the shard file matches its index entry."""
    check_shard(Path(folder) / entry.name, entry)
