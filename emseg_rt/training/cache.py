"""Embedding cache: the frozen encoders run once over the training tiles; their embeddings live in zarr.

ScSAM trains only FAFM, the class prompt encoder and the decoder on top of frozen SAM and MAE encoders
(§3, §4.2), so each training tile's embeddings never change: computing them once turns every later
epoch into head-only work. A cache is a zarr v3 group:

    cache.zarr/
      labels          (N, T, T) uint8      ground truth of each tile
      sam_embedding   (N, C_s, H, W) float16
      mae_embedding   (N, C_m, H, W) float16
      attrs: emseg_rt (= "embedding-cache", the marker), key (sha256 of model name, encoder weights, data
             paths and tile plan), model, tile, tiles, sources

Tiles are a grid over every z-slice (the last row and column flush with the edge, none dropped). The
embedding function is any callable uint8 tiles (B, 1, T, T) → {"sam_embedding", "mae_embedding"}:
by default the torch pipeline's `embed`, or a runtime backend running exported encoder components.
A cache is written to `<path>.partial` (marked as ours in the very first file written, its zarr.json) and
renamed when complete; a cache whose key differs is rebuilt beside it and swapped in. A build that fails (a
full disk, an error, Ctrl-C) removes its `.partial`; one that was killed leaves it, and the next build removes
it: a leftover of ours never blocks a later run. Only a directory that is an emseg-rt embedding cache
(`is_embedding_cache`: the marker, or the attributes every cache has carried; for `.partial`, also an empty
directory or one holding only zarr's own temporary files, what a kill or a full disk leaves before the marker)
is ever deleted or replaced: `--cache DIR` naming anything else is refused (`check_cache_path`).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import zarr
from torch import nn

from emseg_rt.errors import EmsegError
from emseg_rt.io.outputs import write_failure
from emseg_rt.models.checkpoint import state_dict_digest
from emseg_rt.models.pipeline import embedding_name
from emseg_rt.onnx_session import OnnxGraph
from emseg_rt.package import load_package
from emseg_rt.training.sampling import tile_starts

CACHE_MARKER = ("emseg_rt", "embedding-cache")  # root attribute naming a directory as our embedding cache
LEGACY_ATTRS = ("key", "model", "tile", "tiles", "sources")  # what caches carried before the marker
EmbedFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]
ZARR_TEMPORARY = re.compile(r"zarr\.[0-9a-f]{32}\.partial")  # zarr writes zarr.json as this, then renames it


def tile_plan(shape: tuple[int, int, int], tile: int) -> list[tuple[int, int, int]]:
    """(z, y, x) corners of the training tiles of a (Z, Y, X) volume: a non-overlapping grid per slice."""
    nz, ny, nx = shape
    return [(z, y, x) for z in range(nz) for y in tile_starts(ny, tile, tile) for x in tile_starts(nx, tile, tile)]


def encoder_digest(model: nn.Module) -> str:
    """sha256 over the encoders' weights: a cache made with other encoder weights is not reused."""
    return state_dict_digest(model.encoders)


def cache_key(model: nn.Module, sources: list[str], plan: list[tuple[int, int, int]], encoders: str | None = None) -> str:
    """encoders: identity of what computes the embeddings (default: the torch encoders' weight digest)."""
    payload = json.dumps({"model": model.config.name, "encoders": encoders or encoder_digest(model),
                          "sources": sources, "plan": plan}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _root_attributes(path: Path) -> dict | None:
    """The root attributes of the zarr v3 group at `path` (read from its zarr.json), None when `path` is
    not a directory holding one."""
    meta = path / "zarr.json"
    if path.is_symlink() or not path.is_dir() or meta.is_symlink() or not meta.is_file():
        return None
    try:
        content = json.loads(meta.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or content.get("node_type") != "group":
        return None
    attributes = content.get("attributes", {})
    return attributes if isinstance(attributes, dict) else None


def is_embedding_cache(path: str | Path, partial: bool = False) -> bool:
    """Whether `path` is a directory emseg-rt wrote as an embedding cache: a zarr group with our marker
    attribute (with `partial`, one still being written), or a complete cache from before the marker."""
    attributes = _root_attributes(Path(path))
    if attributes is None:
        return partial and _unmarked_leftover(Path(path))
    if attributes.get(CACHE_MARKER[0]) == CACHE_MARKER[1]:
        return True
    return not partial and all(name in attributes for name in LEGACY_ATTRS)


def _unmarked_leftover(path: Path) -> bool:
    """Whether `path` is what a cache build of ours leaves when killed (or out of space) before its first
    zarr.json was in place: an empty directory, or one holding only zarr's temporary metadata files."""
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        entries = list(path.iterdir())
    except OSError:
        return False
    return all(entry.is_file() and not entry.is_symlink() and ZARR_TEMPORARY.fullmatch(entry.name)
               for entry in entries)


def check_cache_path(path: str | Path, option: str = "--cache") -> Path:
    """EmsegError unless `path` is absent or an embedding cache (which may be reused or rebuilt), and the
    same for the `.partial` directory a cache is written into: nothing else is ever replaced."""
    path = Path(path)
    for candidate, partial in ((path, False), (path.with_name(path.name + ".partial"), True)):
        if (candidate.exists() or candidate.is_symlink()) and not is_embedding_cache(candidate, partial):
            raise EmsegError(f"{option} {candidate}: exists and is not an emseg-rt embedding cache; it is left "
                             "alone: choose another path (or remove it yourself)")
    return path


class EmbeddingCache:
    """A finished cache: random access to (embeddings, labels) of tile i."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.group = zarr.open_group(str(self.path), mode="r")
        self.labels = np.asarray(self.group["labels"][...])
        self.embeddings = {name: np.asarray(self.group[name][...])
                           for name in ("sam_embedding", "mae_embedding") if name in self.group}

    @property
    def key(self) -> str:
        return str(self.group.attrs["key"])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, indices: np.ndarray,
              device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """indices (B,) → embeddings {name: (B, C, H, W) float32} and labels (B, T, T) uint8, on `device`."""
        indices = np.sort(indices)
        embeddings = {name: torch.from_numpy(array[indices].astype(np.float32)).to(device)
                      for name, array in self.embeddings.items()}
        return embeddings, torch.from_numpy(self.labels[indices]).to(device)


@torch.no_grad()
def build_cache(
    path: str | Path,
    model: nn.Module,
    image: np.ndarray,
    labels: np.ndarray,
    sources: list[str],
    embed_fn: EmbedFn | None = None,
    batch: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
    embed_identity: str | None = None,
) -> EmbeddingCache:
    """Embed every training tile of image (Z, Y, X) uint8 with labels (Z, Y, X) uint8, or reuse a matching cache.

    sources:         strings identifying the data (paths), part of the cache key.
    embed_fn:        tiles → embeddings; default `model.embed` (torch). `package_embedder` gives one that
                     runs an exported package's encoder graphs in ONNX Runtime.
    embed_identity:  what `embed_fn` computes with (e.g. the package's file hashes), part of the key.
    """
    path = check_cache_path(path)
    tile = model.config.tile
    plan = tile_plan(image.shape, tile)
    key = cache_key(model, sources, plan, embed_identity)
    existing = _open_matching(path, key, len(plan))
    if existing is not None:
        return existing
    embed = embed_fn or model.embed
    device = torch.device("cpu") if embed_fn else next(model.parameters()).device  # package graphs take host arrays
    model.eval()
    tmp = path.with_name(path.name + ".partial")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)  # an interrupted build of ours (check_cache_path made sure)
        group = zarr.open_group(str(tmp), mode="w-", zarr_format=3,  # the marker is in its first zarr.json
                                attributes={CACHE_MARKER[0]: CACHE_MARKER[1], "complete": False})
        n = len(plan)
        label_array = group.create_array("labels", shape=(n, tile, tile), dtype="uint8",
                                         chunks=(min(n, 64), tile, tile))
        arrays: dict[str, zarr.Array] = {}
        for start in range(0, n, batch):
            chunk = plan[start : start + batch]
            tiles = np.stack([image[z, y : y + tile, x : x + tile] for z, y, x in chunk])[:, None]
            truth = np.stack([labels[z, y : y + tile, x : x + tile] for z, y, x in chunk])
            embeddings = embed(torch.from_numpy(np.ascontiguousarray(tiles)).to(device))
            for name, value in embeddings.items():
                if name not in arrays:
                    arrays[name] = group.create_array(name, shape=(n, *value.shape[1:]), dtype="float16",
                                                      chunks=(min(n, 64), *value.shape[1:]))
                arrays[name][start : start + len(chunk)] = value.float().cpu().numpy().astype(np.float16)
            label_array[start : start + len(chunk)] = truth
            if on_progress is not None:
                on_progress(start + len(chunk), n)
        group.attrs.update({"key": key, "model": model.config.name, "tile": tile, "tiles": n, "sources": sources,
                            "complete": True})
        _swap_in(tmp, path)
    except BaseException as exc:  # ours, half-written: removed, so nothing blocks or confuses the next run
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):  # disk full, read-only, permissions: one line naming the cache
            raise write_failure(exc, f"embedding cache {path}", "--cache") from None
        raise
    return EmbeddingCache(path)


def _open_matching(path: Path, key: str, tiles: int) -> EmbeddingCache | None:
    """The cache at `path` when it is complete with this `key` and number of tiles, else None (absent,
    another key, or damaged: then it is rebuilt)."""
    if not path.exists():
        return None
    try:
        existing = EmbeddingCache(path)
    except Exception:  # noqa: BLE001  a damaged cache of ours is rebuilt, whatever zarr raises
        return None
    return existing if existing.key == key and len(existing) == tiles else None


def _swap_in(new: Path, path: Path) -> None:
    """Rename the finished cache `new` to `path`; an old cache there (ours: checked) is moved aside first and
    removed after."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
        path.rename(old)
    new.rename(path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def package_embedder(package_dir: str | Path, model_name: str) -> tuple[EmbedFn, str]:
    """An embed function over an exported model package's encoder graphs, run by ONNX Runtime (CPU).

    Returns (embed_fn, identity); the identity hashes the encoders' manifest records (their files' sha256)
    so a cache made from another export is rebuilt. EmsegError if the package is not a `model_name`
    package with encoders.
    """
    package = load_package(package_dir)
    if package.name != model_name:
        raise EmsegError(f"--embeddings-from {package_dir} is a {package.name} package, not {model_name}")
    if not package.encoder_names:
        raise EmsegError(f"--embeddings-from {package_dir} has no encoder components")
    graphs = {embedding_name(name): OnnxGraph(package.component(name).path, device="cpu")
              for name in package.encoder_names}
    identity = hashlib.sha256(json.dumps(
        {name: package.manifest["components"][name] for name in package.encoder_names}, sort_keys=True, default=str
    ).encode()).hexdigest()

    def embed(tiles: torch.Tensor) -> dict[str, torch.Tensor]:
        """tiles (B, 1, T, T) uint8 → {'sam_embedding': (B, C_s, H, W), 'mae_embedding': ...} float32."""
        array = tiles.numpy()
        embeddings = {}
        for key, graph in graphs.items():
            (output,) = graph.run({graph.input_names[0]: array}, [graph.output_names[0]]).values()
            embeddings[key] = torch.from_numpy(np.asarray(output, dtype=np.float32))
        return embeddings

    return embed, identity
