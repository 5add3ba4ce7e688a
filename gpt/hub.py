"""Hugging Face dataset downloads for `--data hf:OWNER/NAME[@REVISION][:PATTERN[:COLUMN]]`.

    hf:HuggingFaceFW/fineweb-edu:sample/10BT/*.parquet     shards matching the pattern, column "text"
    hf:owner/name                                          every .parquet file of the repo
    hf:owner/name@REVISION:data/*.parquet:content          another branch/commit, column "content"

The file list comes from the hub API (`GET {endpoint}/api/datasets/{repo}/tree/{revision}
?recursive=true`, following `Link: <...>; rel="next"` pages); each matching file is
downloaded from `{endpoint}/datasets/{repo}/resolve/{revision}/{path}`. The endpoint is
$HF_ENDPOINT (default https://huggingface.co); $HF_TOKEN, when set, is sent as a bearer
token (gated datasets). PATTERN is an fnmatch pattern on the path in the repo (`*` also
matches `/`); the default is `*.parquet`.

Downloads land in `<cache>/<owner>--<name>/<revision>/<path>`, written to `<path>.part`
first. An interrupted download (a dropped connection, a killed process) resumes from the
`.part` file's size with an HTTP Range request: within one call up to `retries` times,
and again on the next call. A finished file is checked against the size and the sha256
(the LFS oid) the API reported, or the git blob sha1 for small non-LFS files, before it
is renamed into place; a mismatch deletes the partial file and is an error. Files already
in place with the reported size are not fetched again.
"""
from __future__ import annotations

import fnmatch
import hashlib
import http.client
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from gpt.errors import UserError
from gpt.sources import DEFAULT_COLUMN, DEFAULT_PATTERN, DEFAULT_REVISION, Source, parse_source

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20
TIMEOUT_S = 60.0
RETRIES = 5
BACKOFF_S = 1.0  # doubled after each failed try, at most BACKOFF_MAX_S
BACKOFF_MAX_S = 30.0
_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout)


@dataclass(frozen=True)
class HubSpec:
    repo: str
    revision: str = DEFAULT_REVISION
    pattern: str = DEFAULT_PATTERN
    column: str = DEFAULT_COLUMN

    @classmethod
    def of(cls, source: Source) -> "HubSpec":
        """The download spec of a parsed hf: source."""
        if source.kind != "hf":
            raise ValueError(f"not an hf: source: {source}")
        return cls(source.repo, source.revision, source.pattern, source.column)


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None  # the LFS oid: sha256 of the content
    git_oid: str | None  # git blob sha1, for files not stored in LFS


def parse_spec(rest: str) -> HubSpec:
    """'OWNER/NAME[@REVISION][:PATTERN[:COLUMN]]' (a spec without its "hf:") -> HubSpec, parsed by
    gpt.sources.parse_source; a malformed one is a UserError."""
    return HubSpec.of(parse_source(f"hf:{rest}"))


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _headers() -> dict:
    headers = {"User-Agent": "evo-data/1"}
    token = os.environ.get("HF_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _http_error(exc: urllib.error.HTTPError, what: str) -> UserError:
    hint = {401: "the dataset may be gated or private: set HF_TOKEN",
            403: "access denied: set HF_TOKEN or ask for access",
            404: "no such dataset, revision or file"}.get(exc.code, "")
    return UserError(f"{what} failed: HTTP {exc.code} {exc.reason}" + (f" ({hint})" if hint else ""))


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in (408, 429) or exc.code >= 500
    return isinstance(exc, _TRANSIENT)


def _sleep(attempt: int, backoff_s: float) -> None:
    time.sleep(min(BACKOFF_MAX_S, backoff_s * 2**attempt))


def list_files(spec: HubSpec, base: str | None = None, retries: int = RETRIES,
               backoff_s: float = BACKOFF_S) -> list[RemoteFile]:
    """Every file of the dataset repo at the revision (all pages of the tree listing)."""
    base = base or endpoint()
    url = (f"{base}/api/datasets/{spec.repo}/tree/{urllib.parse.quote(spec.revision, safe='')}"
           f"?recursive=true")
    files: list[RemoteFile] = []
    while url:
        for attempt in range(retries + 1):
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=_headers()), timeout=TIMEOUT_S) as resp:
                    entries = json.loads(resp.read())
                    link = resp.headers.get("Link", "")
                break
            except urllib.error.HTTPError as exc:
                if not _transient(exc) or attempt == retries:
                    raise _http_error(exc, f"listing hf:{spec.repo} at {base}") from None
            except _TRANSIENT as exc:
                if attempt == retries:
                    raise UserError(f"listing hf:{spec.repo} at {base} failed: {exc}") from None
            _sleep(attempt, backoff_s)
        for e in entries:
            if e.get("type") != "file":
                continue
            lfs = e.get("lfs") or {}
            files.append(RemoteFile(path=e["path"], size=lfs.get("size", e.get("size")), sha256=lfs.get("oid"),
                                    git_oid=None if lfs else e.get("oid")))
        match = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', link)
        url = urllib.parse.urljoin(url, match.group(1)) if match else None
    return files


def _digests(path: Path) -> tuple[str, str, int]:
    """sha256 and git blob sha1 of a file, and its size."""
    size = path.stat().st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            sha256.update(block)
            sha1.update(block)
    return sha256.hexdigest(), sha1.hexdigest(), size


def _verify(part: Path, remote: RemoteFile) -> str | None:
    """What is wrong with a finished download, or None."""
    sha256, sha1, size = _digests(part)
    if remote.size is not None and size != remote.size:
        return f"size {size} bytes, the hub reports {remote.size}"
    if remote.sha256 and sha256 != remote.sha256:
        return f"sha256 {sha256}, the hub reports {remote.sha256}"
    if remote.git_oid and not remote.sha256 and sha1 != remote.git_oid:
        return f"git blob sha1 {sha1}, the hub reports {remote.git_oid}"
    return None


class _Progress:
    def __init__(self, name: str, total: int | None, quiet: bool):
        self.name, self.total, self.quiet = name, total, quiet
        self.last = time.monotonic()

    def __call__(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if self.quiet or (now - self.last < 5.0 and not final):
            return
        self.last = now
        of = f" of {self.total / 1e6:.1f}" if self.total else ""
        print(f"download {self.name}: {done / 1e6:.1f}{of} MB", file=sys.stderr, flush=True)


def _fetch_once(url: str, part: Path, remote: RemoteFile, progress: _Progress) -> bool:
    """Append to `part` from where it stops (Range), or start it over. True if it resumed."""
    have = part.stat().st_size if part.exists() else 0
    if remote.size is not None and have > remote.size:
        have = 0
    headers = _headers()
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the part file is complete (or wrong)
            return True
        raise
    with resp:
        resumed = bool(have) and resp.status == 206
        done = have if resumed else 0
        with open(part, "ab" if resumed else "wb") as f:
            for block in iter(lambda: resp.read(CHUNK), b""):
                f.write(block)
                done += len(block)
                progress(done)
        # http.client ends a body cut short by the server quietly: check what was promised
        missing = resp.length if resp.length else (remote.size - done if remote.size is not None else 0)
        if missing > 0:
            raise http.client.IncompleteRead(b"", missing)
    return resumed


def download_file(url: str, dest: Path, remote: RemoteFile, retries: int = RETRIES, backoff_s: float = BACKOFF_S,
                  quiet: bool = False) -> Path:
    """Download `url` to `dest` through `dest.part`, resuming and retrying, then verify it."""
    if dest.exists() and (remote.size is None or dest.stat().st_size == remote.size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    progress = _Progress(remote.path, remote.size, quiet)
    attempt, restarted = 0, False
    while True:
        try:
            resumed = _fetch_once(url, part, remote, progress)
        except urllib.error.HTTPError as exc:
            if not _transient(exc) or attempt >= retries:
                raise _http_error(exc, f"downloading {url}") from None
        except _TRANSIENT as exc:
            if attempt >= retries:
                raise UserError(f"downloading {url} failed after {attempt + 1} tries: {exc}; run the same command "
                                f"again to resume from {part.stat().st_size if part.exists() else 0} bytes") from None
        else:
            problem = _verify(part, remote)
            if problem is None:
                progress(part.stat().st_size, final=True)
                os.replace(part, dest)
                return dest
            part.unlink()
            if resumed and not restarted:  # the kept part may be stale (the file changed): once more from zero
                restarted = True
                continue
            raise UserError(f"checksum mismatch for {remote.path} from {url}: got {problem}. The download was "
                            f"deleted; run again to retry, or check HF_ENDPOINT / the revision")
        _sleep(attempt, backoff_s)
        attempt += 1


def local_dir(cache: Path, spec: HubSpec) -> Path:
    return Path(cache) / spec.repo.replace("/", "--") / spec.revision.replace("/", "--")


def download(spec: HubSpec, cache: Path, base: str | None = None, retries: int = RETRIES,
             backoff_s: float = BACKOFF_S, quiet: bool = False) -> list[Path]:
    """Download every file of the repo that matches the pattern; local paths in repo-path order."""
    base = base or endpoint()
    files = sorted((f for f in list_files(spec, base, retries, backoff_s) if fnmatch.fnmatchcase(f.path, spec.pattern)),
                   key=lambda f: f.path)
    if not files:
        raise UserError(f"hf:{spec.repo} at {spec.revision} has no file matching {spec.pattern!r} (at {base})")
    root = local_dir(cache, spec)
    out = []
    for f in files:
        if any(part in ("", ".", "..") for part in f.path.split("/")):
            raise UserError(f"hf:{spec.repo} lists an unsafe path {f.path!r}")
        url = (f"{base}/datasets/{spec.repo}/resolve/{urllib.parse.quote(spec.revision, safe='')}/"
               f"{urllib.parse.quote(f.path)}")
        out.append(download_file(url, root / f.path, f, retries, backoff_s, quiet))
    return out


def hf_documents(spec: HubSpec, cache: Path) -> Iterator[tuple[str, str]]:
    """The documents of an hf: source: download (or reuse) the shards, then stream their rows."""
    from gpt.readers import parquet_file_documents

    paths = download(spec, cache)
    for p in paths:
        yield from parquet_file_documents(p, spec.column)
