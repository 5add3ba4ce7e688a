"""Hugging Face dataset downloads for `--data hf:OWNER/NAME[@REVISION][:PATTERN[:COLUMN]]`.

    hf:HuggingFaceFW/fineweb-edu:sample/10BT/*.parquet     shards matching the pattern, column "text"
    hf:owner/name                                          every .parquet file of the repo
    hf:owner/name@REVISION:data/*.parquet:content          another branch/commit, column "content"

The talking to the hub is done by the `huggingface_hub` library: the revision is resolved to a
commit once, the repo's files at that commit are listed (`HfApi.list_repo_tree`, all pages), and
each file whose path matches PATTERN (fnmatch on the path in the repo, `*` also matches `/`;
default `*.parquet`) is fetched with `hf_hub_download`, which retries a dropped connection with
a Range request for the missing bytes. The endpoint is $HF_ENDPOINT (default
https://huggingface.co); $HF_TOKEN, when set, is the bearer token (gated or private datasets),
and no other token (no stored login) is used.

Downloads land in `<cache>/<owner>--<name>/<revision>/<path>`; the library keeps its bookkeeping
(what commit and etag each file came from, partial downloads) in `.cache/huggingface/` inside
that folder, and nothing is written under ~/.cache. A file already in place from the same commit
is not fetched again. A file fetched by this call is checked against the size and sha256 (the
LFS oid) of the listing, or the git blob sha1 for small non-LFS files; a mismatch deletes it
and is an error. Plain HTTP is used, not the xet protocol.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from gpt.errors import UserError
from gpt.sources import DEFAULT_COLUMN, DEFAULT_PATTERN, DEFAULT_REVISION, Source, parse_source

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20
TIMEOUT_S = 60.0
AGAIN = "run the same command again to retry"


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


def parse_spec(rest: str) -> HubSpec:
    """'OWNER/NAME[@REVISION][:PATTERN[:COLUMN]]' (a spec without its "hf:") -> HubSpec, parsed by
    gpt.sources.parse_source; a malformed one is a UserError."""
    return HubSpec.of(parse_source(f"hf:{rest}"))


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def local_dir(cache: Path, spec: HubSpec) -> Path:
    return Path(cache) / spec.repo.replace("/", "--") / spec.revision.replace("/", "--")


def _token() -> str | bool:
    """$HF_TOKEN, or False: tells huggingface_hub to send no token rather than look for a stored one."""
    return os.environ.get("HF_TOKEN") or False


@contextlib.contextmanager
def _library_settings():
    """huggingface_hub reads these switches from the environment when it is imported; set them for
    the calls made here: no xet transfers (they keep a chunk cache under ~/.cache), and no
    telemetry, whose agent detection fetches a list from huggingface.co and caches it under ~/.cache."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_DISABLE_XET, constants.HF_HUB_DISABLE_TELEMETRY
    constants.HF_HUB_DISABLE_XET = constants.HF_HUB_DISABLE_TELEMETRY = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET, constants.HF_HUB_DISABLE_TELEMETRY = saved


def _library_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises for a refused request or a failed connection (its HTTP client is httpx2)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    return HfHubHTTPError, httpx2.TransportError, OSError


def _user_error(exc: BaseException, what: str, spec: HubSpec, base: str) -> UserError:
    """A UserError for one of `_library_errors()` met while doing `what`. Built from the status code
    and our own words, so the token never appears in it."""
    import httpx2
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RemoteEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    where = f"{what} failed (hf:{spec.repo} at {base})"
    if isinstance(exc, OfflineModeIsEnabled):
        return UserError(f"{where}: HF_HUB_OFFLINE is set; unset it to download")
    response = getattr(exc, "response", None) if isinstance(exc, HfHubHTTPError) else None
    if response is not None:
        code = response.status_code
        if isinstance(exc, GatedRepoError) or code in (401, 403):
            hint = "the dataset may be gated or private: set HF_TOKEN to a token that has access"
            if _token():
                hint += " (the HF_TOKEN set was refused)"
        elif isinstance(exc, RevisionNotFoundError):
            hint = f"no revision {spec.revision!r}: check the @REVISION of the spec"
        elif isinstance(exc, RepositoryNotFoundError):
            hint = "no such dataset: check OWNER/NAME and HF_ENDPOINT, or set HF_TOKEN if it is private"
        elif isinstance(exc, RemoteEntryNotFoundError):
            hint = "no such file at that revision"
        elif code in (408, 429) or code >= 500:
            hint = f"the hub is busy or down; {AGAIN}"
        else:
            hint = "check HF_ENDPOINT and the spec"
        return UserError(f"{where}: HTTP {code} {response.reason_phrase} ({hint})")
    # huggingface_hub wraps a failed metadata request in LocalEntryNotFoundError: name the cause
    cause = exc.__cause__ if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None else exc
    detail = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
    if isinstance(cause, (httpx2.TransportError, ConnectionError, TimeoutError)):
        return UserError(f"{where}: network failure ({detail}); check the connection and HF_ENDPOINT, then {AGAIN}")
    return UserError(f"{where}: {detail}; {AGAIN}")


def list_files(spec: HubSpec, base: str | None = None) -> tuple[str, list]:
    """The commit the revision points to, and every file of the dataset repo at that commit (the
    `RepoFile`s of huggingface_hub)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    base = (base or endpoint()).rstrip("/")
    api = HfApi(endpoint=base, token=_token(), library_name="evo-data", library_version="1")
    with _library_settings():
        try:
            commit = api.dataset_info(spec.repo, revision=spec.revision, timeout=TIMEOUT_S).sha
            files = [f for f in api.list_repo_tree(spec.repo, recursive=True, revision=commit or spec.revision,
                                                   repo_type="dataset") if isinstance(f, RepoFile)]
        except _library_errors() as exc:
            raise _user_error(exc, "listing the files", spec, base) from None
    return commit or spec.revision, files


def _digests(path: Path) -> tuple[str, str, int]:
    """sha256 and git blob sha1 of a file, and its size."""
    size = path.stat().st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            sha256.update(block)
            sha1.update(block)
    return sha256.hexdigest(), sha1.hexdigest(), size


def _verify(path: Path, remote) -> str | None:
    """What is wrong with a downloaded file, compared with its listing entry (a RepoFile), or None."""
    sha256, sha1, size = _digests(path)
    want_size = remote.lfs.size if remote.lfs else remote.size
    if want_size is not None and size != want_size:
        return f"size {size} bytes, the hub reports {want_size}"
    if remote.lfs and sha256 != remote.lfs.sha256:
        return f"sha256 {sha256}, the hub reports {remote.lfs.sha256}"
    if not remote.lfs and remote.blob_id and sha1 != remote.blob_id:
        return f"git blob sha1 {sha1}, the hub reports {remote.blob_id}"
    return None


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def download(spec: HubSpec, cache: Path, base: str | None = None, quiet: bool = False) -> list[Path]:
    """Download every file of the repo that matches the pattern; local paths in repo-path order."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import silent_tqdm

    base = (base or endpoint()).rstrip("/")
    commit, listed = list_files(spec, base)
    files = sorted((f for f in listed if fnmatch.fnmatchcase(f.path, spec.pattern)), key=lambda f: f.path)
    if not files:
        raise UserError(f"hf:{spec.repo} at {spec.revision} has no file matching {spec.pattern!r} (at {base}); "
                        f"check the :PATTERN of the spec (an fnmatch pattern on the path in the repo)")
    root = local_dir(cache, spec)
    out = []
    for f in files:
        if any(part in ("", ".", "..") for part in f.path.split("/")):
            raise UserError(f"hf:{spec.repo} lists an unsafe path {f.path!r}")
        dest = root / f.path
        size = f.lfs.size if f.lfs else f.size
        if dest.exists() and size is not None and dest.stat().st_size != size:
            dest.unlink()  # cut short or changed by hand: fetch it again
        before = _stamp(dest)
        if not quiet and before is None:
            print(f"download hf:{spec.repo} {f.path} ({size / 1e6:.1f} MB)" if size is not None else
                  f"download hf:{spec.repo} {f.path}", file=sys.stderr, flush=True)
        with _library_settings():
            try:
                hf_hub_download(spec.repo, f.path, repo_type="dataset", revision=commit, local_dir=root,
                                cache_dir=cache, endpoint=base, token=_token(), library_name="evo-data",
                                library_version="1", tqdm_class=silent_tqdm if quiet else None)
            except _library_errors() as exc:
                raise _user_error(exc, f"downloading {f.path}", spec, base) from None
        if _stamp(dest) != before:  # fetched now (not the file that was already in place): check it
            problem = _verify(dest, f)
            if problem is not None:
                dest.unlink()
                raise UserError(f"checksum mismatch for {f.path} from hf:{spec.repo} at {base}: got {problem}. "
                                f"The download was deleted; run again to retry, or check HF_ENDPOINT / the revision")
        out.append(dest)
    return out


def hf_documents(spec: HubSpec, cache: Path) -> Iterator[tuple[str, str]]:
    """The documents of an hf: source: download (or reuse) the shards, then stream their rows."""
    from gpt.readers import parquet_file_documents

    paths = download(spec, cache)
    for p in paths:
        yield from parquet_file_documents(p, spec.column)
