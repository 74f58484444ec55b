"""Official checkpoints by name: download into the cache, resume a partial file, verify size and sha256.

    fetch_weights("sam-vit-b")        -> $EMSEG_RT_CACHE/weights/sam_vit_b_01ec64.pth, verified
    resolve_checkpoint("sam-vit-b")   -> the same; a path that exists stays that path

Cache: `$EMSEG_RT_CACHE/weights` (default `~/.cache/emseg-rt/weights`, the root `export.cache` uses for packages).
Mirror: `$EMSEG_RT_WEIGHTS_URL` (or `mirror=`) replaces each publisher's address by `BASE/<file name>`: a facility
behind a proxy, or an internal server holding the same files; the size and sha256 checks are the same.

A download goes to `<file>.part` and is renamed onto `<file>` only once its size and sha256 (and the publisher's
md5, where one is given) match; an interrupted download keeps its `.part` and the next fetch continues it with an
HTTP Range request. A mismatch deletes that `.part` and nothing else. Processes fetching one name at once take
turns on `<file>.lock` (an empty file, left in place): one downloads, the others wait and use its file.

Why urllib and not pooch: pooch checks hashes, but it downloads into a temporary file that it deletes when a
download fails and has no way to continue one (no Range requests); a 2.5 GB SAM ViT-H over a facility's network
needs to resume. The standard library's urllib does Range in a few lines and adds no dependency.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, TextIO
from urllib.parse import urlparse

from emseg_rt.errors import EmsegError
from emseg_rt.progress import Progress
from emseg_rt.weights.registry import OFFICIAL_WEIGHTS, OfficialWeights, official_weights

CACHE_ENV = "EMSEG_RT_CACHE"
MIRROR_ENV = "EMSEG_RT_WEIGHTS_URL"
CHUNK = 1 << 20  # bytes read and hashed at a time
MIB = 1 << 20
TIMEOUT_S = 60.0  # seconds without a byte before a download counts as interrupted (resumable)

Say = Callable[[str], None]


def cache_root() -> Path:
    """$EMSEG_RT_CACHE, else ~/.cache/emseg-rt (the same root `emseg_rt.export.cache` keeps packages in)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "emseg-rt").expanduser()


def weights_dir(cache: Path | None = None) -> Path:
    """Where official checkpoints are kept: <cache>/weights."""
    return (cache_root() if cache is None else Path(cache)) / "weights"


def download_url(entry: OfficialWeights, mirror: str | None = None) -> str:
    """The publisher's URL, or `<mirror>/<file name>` when a mirror is given or $EMSEG_RT_WEIGHTS_URL is set."""
    base = os.environ.get(MIRROR_ENV, "") if mirror is None else mirror
    return f"{base.rstrip('/')}/{entry.filename}" if base else entry.url


def file_digests(path: Path, md5: bool = False) -> tuple[str, str | None]:
    """(sha256, md5 or None) hex digests of a file, read once (md5 only when asked: it halves the speed)."""
    sha256_hash = hashlib.sha256()
    md5_hash = hashlib.md5(usedforsecurity=False) if md5 else None
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            sha256_hash.update(block)
            if md5_hash is not None:
                md5_hash.update(block)
    return sha256_hash.hexdigest(), None if md5_hash is None else md5_hash.hexdigest()


def mismatch(entry: OfficialWeights, path: Path) -> str | None:
    """Why `path` is not `entry`'s file (size, sha256 or md5), or None when it is."""
    size = path.stat().st_size
    if size != entry.size:
        return f"{size} bytes, expected {entry.size}"
    sha256, md5 = file_digests(path, md5=entry.md5 is not None)
    if sha256 != entry.sha256:
        return f"sha256 {sha256}, expected {entry.sha256}"
    if entry.md5 is not None and md5 != entry.md5:
        return f"md5 {md5}, expected the publisher's {entry.md5}"
    return None


def fetch_weights(name: str, *, cache: Path | None = None, mirror: str | None = None, say: Say | None = None,
                  progress: bool = True) -> Path:
    """The verified file of official checkpoint `name` in the cache, downloaded (or resumed) when missing.

    cache: the cache root (default `cache_root()`); mirror: a base URL in place of the publisher's (default
    $EMSEG_RT_WEIGHTS_URL); say: where progress lines go when stderr is no terminal; progress: False for none.
    EmsegError (one line, saying what to do) for an unknown name, a cached file that does not match, a download
    that does not match (its partial file removed), an unreachable server, or an interrupted download (resumable).
    Processes fetching the same name at once (an array job's tasks) take turns on `<file>.lock`: one downloads,
    the others wait and then use its file (POSIX; elsewhere they are not serialised).
    """
    entry = official_weights(name)
    folder = weights_dir(cache)
    target = folder / entry.filename
    if target.is_file():
        return _verified(entry, target)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmsegError(f"weights {name}: cannot create the cache {folder} ({exc.strerror}); set {CACHE_ENV} to a "
                         "writable directory") from None
    url = download_url(entry, mirror)
    partial = folder / f"{entry.filename}.part"
    with open(folder / f"{entry.filename}.lock", "a") as lock:  # held from download to rename; left in place
        _take_turn(lock, entry, say)
        if target.is_file():  # another process finished it while this one waited
            return _verified(entry, target)
        _download(entry, url, partial, say, progress)
        wrong = mismatch(entry, partial)
        if wrong is not None:
            partial.unlink(missing_ok=True)  # our own partial file, and only it
            raise EmsegError(f"weights {name}: the download from {url} is not the published file ({wrong}); "
                             f"removed {partial.name}; run the fetch again, or download {entry.url} by hand and "
                             "pass its path")
        os.replace(partial, target)  # atomic: a file under the final name is always complete and verified
    return target


def _verified(entry: OfficialWeights, path: Path) -> Path:
    """`path` when it is `entry`'s file; EmsegError saying what to do otherwise (the file is left alone)."""
    wrong = mismatch(entry, path)
    if wrong is not None:
        raise EmsegError(f"weights {entry.name}: the cached {path} is not the published file ({wrong}); delete it "
                         f"and run `emseg-rt weights fetch {entry.name}` again")
    return path


def _take_turn(handle: TextIO, entry: OfficialWeights, say: Say | None) -> None:
    """An exclusive lock on the open lock file, waiting (and saying so) while another process holds it."""
    try:
        import fcntl  # optional: POSIX only; elsewhere concurrent fetches of one name are not serialised
    except ImportError:
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if say is not None:
            say(f"download {entry.name}: another process is downloading it; waiting for it to finish")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)


def _download(entry: OfficialWeights, url: str, partial: Path, say: Say | None, progress: bool) -> None:
    """Bring `partial` to `entry.size` bytes from `url`, continuing what it already holds (a Range request)."""
    have = partial.stat().st_size if partial.is_file() else 0
    if have >= entry.size:
        return  # complete, or longer than the file: the checks after this say which
    response = _open(entry, url, have)
    with response, open(partial, "ab") as out:
        if have and response.status != 206:  # the server sent the whole file: start over
            out.truncate(0)
            have = 0
        with Progress(f"download {entry.name}", -(-entry.size // MIB), done=have // MIB, unit="MiB", say=say,
                      enabled=progress) as bar:
            _copy(entry, url, response, out, have, bar)


def _open(entry: OfficialWeights, url: str, have: int):  # noqa: ANN202 - an http.client.HTTPResponse
    """The server's response for the bytes from `have` on; EmsegError in one line when it cannot be reached."""
    request = urllib.request.Request(url, headers={"User-Agent": "emseg-rt"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 - http(s) URLs of the registry
    except urllib.error.HTTPError as exc:
        raise EmsegError(f"weights {entry.name}: {url} answered HTTP {exc.code} {exc.reason}; check the mirror "
                         f"(--mirror, {MIRROR_ENV}) if one is set, or download {entry.url} by hand and pass its "
                         "path") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EmsegError(f"weights {entry.name}: cannot reach {urlparse(url).netloc} ({reason}); offline or behind "
                         f"a proxy? download {entry.url} by hand and pass its path to --checkpoint, put it in "
                         f"{weights_dir()}, or set {MIRROR_ENV} to a mirror holding {entry.filename}") from None


def _copy(entry: OfficialWeights, url: str, response: BinaryIO, out: BinaryIO, have: int, bar: Progress) -> None:
    """Stream the response into `out`, never past `entry.size`; a connection that drops or stalls before the end
    keeps the partial file for the next fetch to resume."""
    reason = "the connection closed early"
    try:
        while block := response.read(CHUNK):
            if have + len(block) > entry.size:  # longer than published: keep the published length, the hash decides
                out.write(block[: entry.size - have])
                have = entry.size
                break
            out.write(block)
            have += len(block)
            bar.update(have // MIB)
    except (OSError, socket.timeout, http.client.HTTPException) as exc:  # reset, timeout, incomplete read
        reason = str(exc) or type(exc).__name__
    if have < entry.size:
        out.flush()
        raise EmsegError(f"weights {entry.name}: the download from {url} stopped after {have} of {entry.size} bytes "
                         f"({reason}); run the fetch again to resume it")


def resolve_checkpoint(value: str | Path, **fetch_options: object) -> Path:
    """A `--checkpoint` value as a file: an existing path as it is, else an official weights name, fetched and
    verified (`fetch_weights`); EmsegError when it is neither."""
    path = Path(value)
    if path.exists():
        return path
    if str(value) in OFFICIAL_WEIGHTS:
        return fetch_weights(str(value), **fetch_options)  # type: ignore[arg-type]
    raise EmsegError(f"checkpoint {value}: no such file, and not an official weights name (emseg-rt weights list: "
                     f"{', '.join(OFFICIAL_WEIGHTS)})")


def resolve_checkpoints(values: Iterable[str | Path], **fetch_options: object) -> list[Path]:
    """`resolve_checkpoint` for each value of a repeated --checkpoint, in order."""
    return [resolve_checkpoint(value, **fetch_options) for value in values]
