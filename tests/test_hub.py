"""Data sources: parquet streaming, --data pysource, and hf:REPO downloads (gpt.hub, through
huggingface_hub) against a local server that answers the requests of the hub's API, resolve
URLs and CDN: listing pages, Range resumes, dropped connections, checksums, the token."""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import socket
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt import hub, readers
from gpt.data import iter_documents, parquet_file_documents, prepare, pysource_files, pysource_roots
from gpt.errors import UserError

from conftest import REPO, SMALL_FRACTIONS, SMALL_SECRET

REPO_ID = "acme/corpus"


COMMIT = "c0ffee" * 6 + "beef"  # the commit that "main" points to
SECRET = "hf_s3cr3tT0kenNeverShown"


def git_blob_sha1(body: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()


def is_lfs(path: str) -> bool:
    return not path.endswith(".md")  # as on the hub: small text files live in git, the shards in LFS


class Request(NamedTuple):
    method: str
    path: str
    range: str | None
    auth: str | None


class FakeHub:
    """Serves `files` ({repo path: bytes}) as the dataset REPO_ID, answering what huggingface_hub asks:

        GET  /api/datasets/{repo}/revision/{rev}    the repo info, with the commit ("sha") of the revision
        GET  /api/datasets/{repo}/tree/{commit}     two entries a page, an absolute `Link: <...>; rel="next"`
        HEAD /datasets/{repo}/resolve/{rev}/{path}  X-Repo-Commit and the ETag (git blob sha1) of a git file;
                                                    for an LFS file (all but *.md) a 302 to the CDN, with
                                                    X-Linked-Etag (the sha256) and X-Linked-Size
        GET  /datasets/{repo}/resolve/{rev}/{path}  the same, with the body of a git file
        GET  {cdn}/blobs/{sha256}                   an LFS file's content, with Range support

    The CDN is this same server under the name "localhost" while the hub is "127.0.0.1": another
    origin, as a real CDN is, so the client must not send it the token. Errors carry the hub's
    X-Error-Code. With `token` set, a hub request without `Authorization: Bearer <token>` gets 401
    GatedRepo. On the CDN, `drop_once` paths lose their connection half-way through the body the
    first time, `down` paths answer 503 to every fetch after their first one, and `corrupt` paths
    are served with one byte changed. Every request is recorded."""

    def __init__(self, files: dict[str, bytes], token: str | None = None):
        self.files = dict(files)
        self.token = token
        self.drop_once: set[str] = set()
        self.down: set[str] = set()
        self.corrupt: set[str] = set()
        self.fetches: dict[str, int] = {}
        self.requests: list[Request] = []
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.route()

            def do_HEAD(self):
                self.route()

            def reply(self, code: int, headers: dict, body: bytes = b""):
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def error(self, code: int, error_code: str | None, message: str):
                headers = {"Content-Type": "application/json", "X-Error-Message": message}
                if error_code:
                    headers["X-Error-Code"] = error_code
                self.reply(code, headers, json.dumps({"error": message}).encode())

            def route(self):
                url = urllib.parse.urlsplit(self.path)
                path = urllib.parse.unquote(url.path)
                hub_.requests.append(Request(self.command, path, self.headers.get("Range"),
                                             self.headers.get("Authorization")))
                if path.startswith("/blobs/"):
                    return self.blob(path[len("/blobs/"):])
                if hub_.token and self.headers.get("Authorization") != f"Bearer {hub_.token}":
                    return self.error(401, "GatedRepo", "Access to this dataset is restricted")
                api = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path)
                resolve = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                match = api or resolve
                if match is None:
                    return self.error(404, None, "Not Found")
                repo, rev = match.group(1), match.group(3 if api else 2)
                if repo != REPO_ID:
                    return self.error(404, "RepoNotFound", "Repository not found")
                if rev not in ("main", COMMIT):
                    return self.error(404, "RevisionNotFound", "Invalid rev id")
                if api and api.group(2) == "revision":
                    body = json.dumps({"id": REPO_ID, "sha": COMMIT, "private": False}).encode()
                    return self.reply(200, {"Content-Type": "application/json"}, body)
                if api:
                    return self.tree(rev, urllib.parse.parse_qs(url.query))
                return self.resolve(resolve.group(3))

            def tree(self, rev: str, query: dict):
                entries = [{"type": "directory", "path": "data", "oid": "0" * 40, "size": 0}]
                for path, body in sorted(hub_.files.items()):
                    entry = {"type": "file", "path": path, "size": len(body), "oid": git_blob_sha1(body)}
                    if is_lfs(path):
                        entry["lfs"] = {"oid": hashlib.sha256(body).hexdigest(), "size": len(body), "pointerSize": 134}
                    entries.append(entry)
                start = int(query.get("cursor", ["0"])[0])
                headers = {"Content-Type": "application/json"}
                if start + 2 < len(entries):
                    nxt = f"{hub_.url}/api/datasets/{REPO_ID}/tree/{rev}?recursive=true&cursor={start + 2}"
                    headers["Link"] = f'<{nxt}>; rel="next"'
                self.reply(200, headers, json.dumps(entries[start:start + 2]).encode())

            def resolve(self, path: str):
                if path not in hub_.files:
                    return self.error(404, "EntryNotFound", f"{path} does not exist on \"main\"")
                body = hub_.files[path]
                if not is_lfs(path):
                    return self.reply(200, {"X-Repo-Commit": COMMIT, "ETag": f'"{git_blob_sha1(body)}"'}, body)
                sha256 = hashlib.sha256(body).hexdigest()
                self.reply(302, {"Location": f"{hub_.cdn}/blobs/{sha256}", "X-Repo-Commit": COMMIT,
                                 "ETag": f'"{"e" * 40}"', "X-Linked-Etag": f'"{sha256}"',
                                 "X-Linked-Size": str(len(body))})

            def blob(self, sha256: str):
                path = next((p for p, b in hub_.files.items() if hashlib.sha256(b).hexdigest() == sha256), None)
                if path is None:
                    return self.error(404, None, "NoSuchKey")
                n = hub_.fetches[path] = hub_.fetches.get(path, 0) + 1
                if path in hub_.down and n > 1:
                    return self.error(503, None, "Service Unavailable")
                body = hub_.files[path]
                if path in hub_.corrupt:
                    body = bytes([body[0] ^ 1]) + body[1:]
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("ETag", f'"{sha256}"')
                self.end_headers()
                if path in hub_.drop_once:
                    hub_.drop_once.discard(path)
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self.cdn = f"http://localhost:{port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def ranges(self, path: str) -> list[str | None]:
        """The Range header of each fetch of an LFS file's content from the CDN."""
        blob = "/blobs/" + hashlib.sha256(self.files[path]).hexdigest()
        return [r.range for r in self.requests if r.method == "GET" and r.path == blob]


def parquet_bytes(tmp: Path, texts: list[str], row_group_size: int) -> bytes:
    path = tmp / f"tmp-{len(texts)}-{row_group_size}.parquet"
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), path, row_group_size=row_group_size)
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("HF_TOKEN", raising=False)


# ---------------------------------------------------------------- parquet


def test_parquet_is_streamed_in_batches_across_row_groups(tmp_path, monkeypatch):
    texts = [f"row {i}\n" if i % 7 else "" for i in range(100)]  # empty rows are skipped
    path = tmp_path / "shard.parquet"
    path.write_bytes(parquet_bytes(tmp_path, texts, row_group_size=16))
    assert pq.ParquetFile(path).num_row_groups == 7
    sizes = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            sizes.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    docs = list(parquet_file_documents(path, batch_size=10))
    assert [t for _, t in docs] == [t for t in texts if t]
    assert docs[1][0] == f"{path}#2"  # names keep the row number across batches and row groups
    assert max(sizes) <= 10 and sum(sizes) == 100 and len(sizes) >= 10
    sizes.clear()
    assert [t for _, t in iter_documents(f"parquet:{tmp_path}/*.parquet")] == [t for t in texts if t]
    with pytest.raises(UserError, match="no column"):
        list(iter_documents(f"parquet:{tmp_path}/*.parquet:body"))


# ---------------------------------------------------------------- pysource


def test_pysource_walks_sys_path_deduplicated_and_sorted(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "pkg" / "__pycache__").mkdir(parents=True)
    (a / "pkg" / "mod.py").write_text("x = 1\n")
    (a / "pkg" / "__pycache__" / "mod.cpython-311.py").write_text("cached\n")
    (a / "pkg" / "data.txt").write_text("not python\n")
    (a / ".hidden").mkdir()
    (a / ".hidden" / "h.py").write_text("hidden\n")
    (a / "top.py").write_text("top\n")
    b.mkdir()
    (b / "other.py").write_text("other\n")
    (b / "link.py").symlink_to(a / "top.py")  # the same file twice: read once
    script_dir = tmp_path / "script"
    script_dir.mkdir()
    (script_dir / "run.py").write_text("script\n")
    monkeypatch.setattr(sys, "path", [str(script_dir), str(b), str(a), str(a / "pkg"), "", str(REPO),
                                      str(tmp_path / "missing")])
    roots = pysource_roots()
    assert roots == [str(b), str(a), str(a / "pkg")]  # not sys.path[0], not this checkout, no missing dirs
    files = pysource_files()
    assert files == sorted([str(a / "pkg" / "mod.py"), str(a / "top.py"), str(b / "other.py")])
    docs = list(iter_documents("pysource"))
    assert [t for _, t in docs] == ["x = 1\n", "top\n", "other\n"]


def test_pysource_prepares_a_dataset(tmp_path, monkeypatch, small_docs):
    site = tmp_path / "site"
    site.mkdir()
    for i, text in enumerate(small_docs):
        (site / f"m{i:04d}.py").write_text(text)
    monkeypatch.setattr(readers, "pysource_roots", lambda: [str(site)])
    ds = prepare("pysource", root=tmp_path / "data", fractions=SMALL_FRACTIONS)
    assert sum(ds.manifest["documents"].values()) == len(set(small_docs))


# ---------------------------------------------------------------- resume of an interrupted preparation


def test_interrupted_preparation_restarts_cleanly(tmp_path, small_source, small_dataset):
    """A preparation killed mid-way leaves `<key>.tmp<pid>`; the next one removes it and finishes."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{small_dataset.path.name}.tmp{dead.pid}"
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "train.bin").write_bytes(b"half")
    ds = prepare(small_source, root=tmp_path, fractions=SMALL_FRACTIONS, secret=SMALL_SECRET)
    assert ds.path.name == small_dataset.path.name and not stale.exists()
    assert ds.manifest["hashes"] == small_dataset.manifest["hashes"]


# ---------------------------------------------------------------- hub


def test_spec_parsing():
    assert hub.parse_spec("acme/corpus") == hub.HubSpec("acme/corpus", "main", "*.parquet", "text")
    assert hub.parse_spec("acme/corpus@v2:data/*.parquet:content") == hub.HubSpec(
        "acme/corpus", "v2", "data/*.parquet", "content")
    for bad in ("", "a b/c", "acme/corpus:x:y:z"):
        with pytest.raises(UserError):
            hub.parse_spec(bad)


@pytest.fixture
def shards(tmp_path) -> dict[str, bytes]:
    return {
        "data/train-00000.parquet": parquet_bytes(tmp_path, [f"alpha {i}\n" * 50 for i in range(40)], 10),
        "data/train-00001.parquet": parquet_bytes(tmp_path, [f"beta {i}\n" * 50 for i in range(40)], 10),
        "data/extra/more-00000.parquet": parquet_bytes(tmp_path, [f"gamma {i}\n" * 50 for i in range(40)], 10),
        "README.md": b"# not a shard\n",
    }


def content_fetches(server: FakeHub, since: int = 0) -> list[Request]:
    """Requests that could carry a file's content or its metadata: resolve and CDN ones."""
    return [r for r in server.requests[since:] if "/resolve/" in r.path or r.path.startswith("/blobs/")]


def test_download_lists_pages_filters_and_verifies(tmp_path, shards):
    with FakeHub(shards) as server:
        spec = hub.parse_spec(f"{REPO_ID}:data/train-*.parquet")
        root = hub.local_dir(tmp_path / "cache", spec)
        paths = hub.download(spec, tmp_path / "cache", base=server.url, quiet=True)
        assert [p.relative_to(root).as_posix() for p in paths] == ["data/train-00000.parquet",
                                                                  "data/train-00001.parquet"]
        assert all(p.read_bytes() == shards[f"data/{p.name}"] for p in paths)
        tree_calls = [r.path for r in server.requests if "/tree/" in r.path]
        assert tree_calls == [f"/api/datasets/{REPO_ID}/tree/{COMMIT}"] * 3  # 5 entries, 2 a page, at the commit
        fetched = {(r.method, r.path) for r in content_fetches(server)}
        assert fetched == {("HEAD", f"/datasets/{REPO_ID}/resolve/{COMMIT}/{p}") for p in shards if "train" in p} | {
            ("GET", f"/blobs/{hashlib.sha256(shards[p]).hexdigest()}") for p in shards if "train" in p}
        before = len(server.requests)
        assert hub.download(spec, tmp_path / "cache", base=server.url, quiet=True) == paths
        assert content_fetches(server, before) == []  # in place from the same commit: not even a HEAD
        # a file in git (not LFS) comes straight from the resolve URL and is checked by its blob sha1
        [readme] = hub.download(hub.parse_spec(f"{REPO_ID}:*.md"), tmp_path / "cache", base=server.url, quiet=True)
        assert readme.read_bytes() == shards["README.md"]
        # a shard cut short by hand is fetched again
        paths[0].write_bytes(paths[0].read_bytes()[:100])
        hub.download(spec, tmp_path / "cache", base=server.url, quiet=True)
        assert paths[0].read_bytes() == shards["data/train-00000.parquet"]


@pytest.fixture(scope="module")
def big() -> dict[str, bytes]:
    """One LFS file of 24 MB: huggingface_hub writes what it receives in 10 MB pieces, so a
    connection dropped half-way leaves a part to resume from only in a file that large."""
    return {"data/big.bin": random.Random(0).randbytes(24 << 20)}


def resumed_at(rng: str | None) -> int:
    assert rng and rng.startswith("bytes=") and rng.endswith("-"), rng
    return int(rng[len("bytes="):-1])


def test_dropped_connection_resumes_with_range(tmp_path, big):
    path, body = next(iter(big.items()))
    with FakeHub(big) as server:
        server.drop_once.add(path)
        spec = hub.parse_spec(f"{REPO_ID}:{path}")
        [out] = hub.download(spec, tmp_path / "cache", base=server.url, quiet=True)
        assert out.read_bytes() == body
        first, second = server.ranges(path)
        assert first is None and 0 < resumed_at(second) <= len(body) // 2  # asks only for bytes it lacks


def test_interrupted_download_is_a_clear_error_and_the_next_run_finishes(tmp_path, big):
    """The connection drops half-way and the CDN then answers 503 to the resumed request: a clear
    error, and nothing where the file belongs. The next call fetches the file; huggingface_hub
    keeps no partial file across calls, so that call starts from the first byte."""
    path, body = next(iter(big.items()))
    with FakeHub(big) as server:
        server.drop_once.add(path)
        server.down.add(path)
        spec = hub.parse_spec(f"{REPO_ID}:{path}")
        with pytest.raises(UserError, match=r"downloading data/big.bin failed.*HTTP 503.*"
                                            r"run the same command again"):
            hub.download(spec, tmp_path / "cache", base=server.url, quiet=True)
        dest = hub.local_dir(tmp_path / "cache", spec) / path
        assert not dest.exists()
        first, second = server.ranges(path)
        assert first is None and resumed_at(second) > 0  # it did resume, then the CDN failed
        server.down.clear()
        [out] = hub.download(spec, tmp_path / "cache", base=server.url, quiet=True)
        assert out == dest and out.read_bytes() == body
        assert server.ranges(path)[2:] == [None]


def test_checksum_mismatch_is_a_clear_error(tmp_path, shards):
    path = "data/train-00000.parquet"
    with FakeHub(shards) as server:
        server.corrupt.add(path)  # right size, one byte off: only the sha256 can tell
        spec = hub.parse_spec(f"{REPO_ID}:{path}")
        with pytest.raises(UserError, match=r"checksum mismatch for data/train-00000.parquet.*sha256"):
            hub.download(spec, tmp_path / "cache", base=server.url, quiet=True)
        dest = hub.local_dir(tmp_path / "cache", spec) / path
        assert not dest.exists()
        assert not list(dest.parent.parent.rglob("*.incomplete"))
        server.corrupt.clear()
        [out] = hub.download(spec, tmp_path / "cache", base=server.url, quiet=True)  # the next run gets it right
        assert out.read_bytes() == shards[path]


def test_missing_dataset_no_match_and_network_failure(tmp_path, shards):
    with FakeHub(shards) as server:
        with pytest.raises(UserError, match=r"hf:acme/nothing .*HTTP 404.*no such dataset"):
            hub.download(hub.parse_spec("acme/nothing"), tmp_path, base=server.url, quiet=True)
        with pytest.raises(UserError, match=r"HTTP 404.*no revision 'v9'"):
            hub.download(hub.parse_spec(f"{REPO_ID}@v9"), tmp_path, base=server.url, quiet=True)
        with pytest.raises(UserError, match="no file matching '\\*.csv'"):
            hub.download(hub.parse_spec(f"{REPO_ID}:*.csv"), tmp_path, base=server.url, quiet=True)
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(UserError, match=r"network failure.*HF_ENDPOINT.*run the same command again"):
        hub.download(hub.parse_spec(REPO_ID), tmp_path, base=closed, quiet=True)
    assert not any(tmp_path.iterdir())


def test_token_is_sent_to_the_hub_only_and_never_shown(tmp_path, shards, monkeypatch, capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    cache = tmp_path / "cache"
    path = "data/train-00000.parquet"
    spec = hub.parse_spec(f"{REPO_ID}:{path}")
    messages = []
    with FakeHub(shards, token=SECRET) as server:
        with pytest.raises(UserError, match="HTTP 401.*set HF_TOKEN") as err:
            hub.download(spec, cache, base=server.url, quiet=True)
        messages.append(str(err.value))
        monkeypatch.setenv("HF_TOKEN", "hf_wrongTokenAlsoSecret")
        with pytest.raises(UserError, match="HTTP 401.*the HF_TOKEN set was refused") as err:
            hub.download(spec, cache, base=server.url, quiet=True)
        assert "hf_wrongTokenAlsoSecret" not in str(err.value)
        monkeypatch.setenv("HF_TOKEN", SECRET)
        server.requests.clear()
        [out] = hub.download(spec, cache, base=server.url)  # not quiet: what it prints is checked below
        assert out.read_bytes() == shards[path]
        hub_requests = [r for r in server.requests if not r.path.startswith("/blobs/")]
        cdn_requests = [r for r in server.requests if r.path.startswith("/blobs/")]
        assert hub_requests and all(r.auth == f"Bearer {SECRET}" for r in hub_requests)
        assert cdn_requests and all(r.auth is None for r in cdn_requests)
        # errors while the token is set: a corrupt download, an interrupted one
        other = "data/train-00001.parquet"
        server.corrupt.add(other)
        with pytest.raises(UserError, match="checksum mismatch") as err:
            hub.download(hub.parse_spec(f"{REPO_ID}:{other}"), cache, base=server.url)
        messages.append(str(err.value))
        server.corrupt.clear()
        server.drop_once.add(other)
        server.down.add(other)
        with pytest.raises(UserError, match="HTTP 503") as err:
            hub.download(hub.parse_spec(f"{REPO_ID}:{other}"), cache, base=server.url)
        messages.append(str(err.value))
    with pytest.raises(UserError, match="network failure") as err:
        hub.download(spec, cache, base=server.url)  # the server is gone
    messages.append(str(err.value))
    printed = capfd.readouterr()
    assert "download hf:acme/corpus data/train-00000.parquet" in printed.err
    for text in messages + [printed.out, printed.err, caplog.text]:
        assert SECRET not in text


def test_prepare_hf_source_end_to_end(tmp_path, small_docs, monkeypatch):
    """`prepare("hf:...")` with HF_ENDPOINT at the local server: shards are downloaded under the
    data root and their rows become the documents."""
    third = len(small_docs) // 3
    files = {f"data/part-{i}.parquet": parquet_bytes(tmp_path, small_docs[i * third:(i + 1) * third], 25)
             for i in range(3)}
    with FakeHub(files) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url + "/")
        ds = prepare(f"hf:{REPO_ID}", root=tmp_path / "data", fractions=SMALL_FRACTIONS)
    assert sum(ds.manifest["documents"].values()) == 3 * third
    assert (tmp_path / "data" / "hub" / "acme--corpus" / "main" / "data" / "part-0.parquet").exists()
    assert ds.manifest["source"] == f"hf:{REPO_ID}"
