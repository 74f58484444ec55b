"""Official weights by name: `emseg-rt weights list/fetch` and `--checkpoint NAME`, against a local HTTP server.

Every download here comes from an http.server on 127.0.0.1 that the test starts, serving bytes the test makes
(with Range requests, as dl.fbaipublicfiles.com and Zenodo answer them); nothing reaches the internet. Test entries
are added to the registry in-process (monkeypatch) and fetched through the real CLI entry point (`main`).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from emseg_rt.cli import main
from emseg_rt.errors import EmsegError
from emseg_rt.weights.fetch import fetch_weights, resolve_checkpoint
from emseg_rt.weights.registry import OFFICIAL_WEIGHTS, OfficialWeights

NAME = "test-weights"


class LocalServer(ThreadingHTTPServer):
    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host name (seconds on a machine without DNS)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]


class WeightsServer:
    """Serves `files` (name → bytes) on 127.0.0.1, honouring `Range: bytes=N-` unless `ranges` is False;
    records each request's path and Range header."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.ranges = True
        self.delay = 0.0  # seconds between 64 KiB pieces: a slow link
        self.cut_at: int | None = None  # a connection that drops after this many bytes of the file
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                wanted = self.headers.get("Range")
                server.requests.append((self.path, wanted))
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1)) if wanted and server.ranges else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                end = len(body) if server.cut_at is None else server.cut_at
                for at in range(start, end, 1 << 16):
                    self.wfile.write(body[at:min(at + (1 << 16), end)])
                    time.sleep(server.delay)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = LocalServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    serving = WeightsServer()
    yield serving
    serving.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty $EMSEG_RT_CACHE and no mirror from the environment."""
    root = tmp_path / "cache"
    monkeypatch.setenv("EMSEG_RT_CACHE", str(root))
    monkeypatch.delenv("EMSEG_RT_WEIGHTS_URL", raising=False)
    return root


def add_entry(monkeypatch, server: WeightsServer, published: bytes, served: bytes | None = None,
              filename: str = "test_weights.pth", models: tuple[str, ...] = ()) -> OfficialWeights:
    """A registry entry for `published` whose URL is the local server, which serves `served` (default the same)."""
    entry = OfficialWeights(NAME, "test", f"{server.url}/{filename}", len(published),
                            hashlib.sha256(published).hexdigest(), models, "made by the test",
                            md5=hashlib.md5(published).hexdigest())
    monkeypatch.setitem(OFFICIAL_WEIGHTS, NAME, entry)
    server.files[filename] = published if served is None else served
    return entry


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The real entry point `emseg-rt ARGS` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["emseg-rt", *args])
    with pytest.raises(SystemExit) as stopped:
        main()
    out, err = capsys.readouterr()
    return stopped.value.code, out, err


def test_fetch_downloads_verifies_and_reuses(monkeypatch, capsys, server, cache):
    payload = np.random.default_rng(1).bytes(3 * (1 << 20) + 123)  # a few chunks and a ragged end
    add_entry(monkeypatch, server, payload)
    code, out, err = run_cli(monkeypatch, capsys, "weights", "fetch", NAME, "--quiet")
    target = cache / "weights" / "test_weights.pth"
    assert code == 0 and out.strip() == str(target)
    assert target.read_bytes() == payload
    assert not (cache / "weights" / "test_weights.pth.part").exists()
    assert resolve_checkpoint(NAME) == target and len(server.requests) == 1  # a verified file is not fetched again


def test_partial_download_resumes_with_a_range_request(monkeypatch, server, cache):
    payload = np.random.default_rng(2).bytes(2 * (1 << 20) + 7)
    add_entry(monkeypatch, server, payload)
    folder = cache / "weights"
    folder.mkdir(parents=True)
    half = len(payload) // 2
    (folder / "test_weights.pth.part").write_bytes(payload[:half])  # an earlier fetch, interrupted
    path = fetch_weights(NAME, progress=False)
    assert server.requests == [("/test_weights.pth", f"bytes={half}-")]
    assert path.read_bytes() == payload


def test_a_dropped_connection_keeps_the_part_and_the_next_fetch_resumes(monkeypatch, capsys, server, cache):
    payload = np.random.default_rng(8).bytes(1 << 20)
    add_entry(monkeypatch, server, payload)
    server.cut_at = 300_000
    code, out, err = run_cli(monkeypatch, capsys, "weights", "fetch", NAME, "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "run the fetch again to resume" in err
    partial = cache / "weights" / "test_weights.pth.part"
    assert partial.read_bytes() == payload[:300_000]
    server.cut_at = None
    assert fetch_weights(NAME, progress=False).read_bytes() == payload
    assert server.requests[-1] == ("/test_weights.pth", "bytes=300000-") and not partial.exists()


def test_a_server_ignoring_range_restarts_the_file(monkeypatch, server, cache):
    payload = np.random.default_rng(3).bytes(100_000)
    add_entry(monkeypatch, server, payload)
    server.ranges = False  # answers 200 with the whole file
    folder = cache / "weights"
    folder.mkdir(parents=True)
    (folder / "test_weights.pth.part").write_bytes(payload[:40_000])
    assert fetch_weights(NAME, progress=False).read_bytes() == payload


def test_concurrent_fetches_of_one_name_download_it_once(monkeypatch, server, cache):
    payload = np.random.default_rng(7).bytes(1 << 20)
    add_entry(monkeypatch, server, payload)
    server.delay = 0.02  # 16 pieces: about 0.3 s, long enough for the second fetch to find the first at work
    results: list[Path] = []
    fetches = [threading.Thread(target=lambda: results.append(fetch_weights(NAME, progress=False)))
               for _ in range(2)]
    for fetch in fetches:
        fetch.start()
    for fetch in fetches:
        fetch.join(timeout=30)
    assert len(results) == 2 and results[0] == results[1] and results[0].read_bytes() == payload
    assert len(server.requests) == 1  # the second waited for the first and used its file


def test_corrupted_download_is_refused_in_one_line(monkeypatch, capsys, server, cache):
    rng = np.random.default_rng(4)
    published = rng.bytes(200_000)
    corrupted = bytearray(published)
    corrupted[123_456] ^= 0xFF  # one flipped byte, same size
    add_entry(monkeypatch, server, published, served=bytes(corrupted))
    folder = cache / "weights"
    folder.mkdir(parents=True)
    unrelated = [folder / "mine.pth", cache / "notes.txt"]
    for path in unrelated:
        path.write_bytes(b"not emseg-rt's to delete")
    code, out, err = run_cli(monkeypatch, capsys, "weights", "fetch", NAME, "--quiet")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "not the published file" in err and "sha256" in err
    assert not (folder / "test_weights.pth.part").exists() and not (folder / "test_weights.pth").exists()
    assert all(path.read_bytes() == b"not emseg-rt's to delete" for path in unrelated)


def test_offline_says_what_to_do_in_one_line(monkeypatch, capsys, server, cache):
    add_entry(monkeypatch, server, b"weights")
    with socket.socket() as probe:  # a port nothing listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = run_cli(monkeypatch, capsys, "weights", "fetch", NAME, "--mirror", f"http://127.0.0.1:{port}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "cannot reach 127.0.0.1" in err and "by hand" in err and "EMSEG_RT_WEIGHTS_URL" in err


def test_mirror_serves_the_same_file_by_name(monkeypatch, server, cache):
    payload = np.random.default_rng(5).bytes(50_000)
    entry = add_entry(monkeypatch, server, payload, filename="elsewhere.pth")
    monkeypatch.setitem(OFFICIAL_WEIGHTS, NAME, OfficialWeights(  # the publisher's URL is unreachable
        entry.name, entry.family, "https://publisher.invalid/files/test_weights.pth", entry.size, entry.sha256,
        (), entry.source))
    server.files["mirror/test_weights.pth"] = payload
    monkeypatch.setenv("EMSEG_RT_WEIGHTS_URL", f"{server.url}/mirror/")
    assert fetch_weights(NAME, progress=False).read_bytes() == payload
    assert server.requests == [("/mirror/test_weights.pth", None)]


def test_list_names_a_source_and_real_models_for_every_entry(monkeypatch, capsys, cache):
    from emseg_rt.models.catalogue import CONFIGS

    code, out, err = run_cli(monkeypatch, capsys, "weights", "list", "--json")
    records = json.loads(out)
    assert code == 0 and {r["name"] for r in records} == set(OFFICIAL_WEIGHTS)
    for record in records:
        assert record["url"].startswith("https://")
        assert re.fullmatch(r"[0-9a-f]{64}", record["sha256"]) and record["size"] > 0
        assert "sha256:" in record["source"] and "size" in record["source"] and "url" in record["source"]
        assert set(record["models"]) <= set(CONFIGS), record["name"]
    code, out, err = run_cli(monkeypatch, capsys, "weights", "list")
    assert code == 0 and all(name in out for name in OFFICIAL_WEIGHTS)


def test_an_existing_path_stays_a_path_and_unknown_names_are_refused(tmp_path, cache):
    shadow = tmp_path / "sam-vit-b"  # a file named like an official entry: the file wins, nothing downloads
    shadow.write_bytes(b"x")
    assert resolve_checkpoint(shadow) == shadow
    with pytest.raises(EmsegError, match="not an official weights name"):
        resolve_checkpoint(tmp_path / "nothing.pt")


def test_checkpoint_name_on_segment_resolves_through_the_cache(monkeypatch, capsys, tmp_path, server, cache):
    """`segment --checkpoint NAME`: fetched into the cache, verified, loaded: the same labels as the file's path."""
    import io

    import torch

    from emseg_rt.io import read_volume, write_ome_image
    from emseg_rt.models import build
    from emseg_rt.runtime import segment_labels

    model = "scsam-tiny"
    torch.manual_seed(7)  # weights unlike the fixed-seed default init
    buffer = io.BytesIO()
    torch.save(build(model).state_dict(), buffer)
    add_entry(monkeypatch, server, buffer.getvalue(), models=(model,))
    data = np.random.default_rng(6).integers(0, 256, (2, 128, 128), dtype=np.uint8)
    src = write_ome_image(tmp_path / "in.zarr", data, voxel_size=(30.0, 5.0, 5.0))
    code, out, err = run_cli(monkeypatch, capsys, "segment", str(src), "--out", str(tmp_path / "out.zarr"), "--model",
                             model, "--checkpoint", NAME, "--backend", "torch", "--device", "cpu", "--quiet")
    cached = cache / "weights" / "test_weights.pth"
    assert code == 0, err
    assert cached.read_bytes() == buffer.getvalue()
    expected = segment_labels(data, model=model, checkpoints=[cached], backend="torch")
    default = segment_labels(data, model=model, backend="torch")
    assert np.array_equal(read_volume(tmp_path / "out.zarr"), expected)
    assert not np.array_equal(expected, default)  # the fetched weights were loaded, not the default init


HEAVY = ("torch", "onnxruntime", "onnx", "zarr", "timm", "dask", "torchvision")
PROBE = """
import contextlib, io, json, sys
from emseg_rt.cli import main
sys.argv = ["emseg-rt", *json.loads(sys.argv[1])]
err = io.StringIO()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
    try:
        main()
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "stderr": err.getvalue(), "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


@pytest.mark.parametrize("args, code", [(["weights", "list"], 0), (["weights", "fetch", "no-such-weights"], 2)])
def test_weights_commands_load_no_heavy_library(args, code, cache):
    import subprocess

    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True, timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == code and result["heavy"] == [], result
    if code == 2:
        assert result["stderr"].count("\n") == 1 and "not an official weights name" in result["stderr"]
