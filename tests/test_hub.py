"""Data sources: parquet streaming, --data pysource, and hf:REPO downloads (gpt.hub) against a
local server with the hub's layout: listing pages, Range resumes, dropped connections, checksums."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt import hub, readers
from gpt.data import iter_documents, parquet_file_documents, prepare, pysource_files, pysource_roots
from gpt.errors import UserError

from conftest import REPO, SMALL_FRACTIONS, SMALL_SECRET

REPO_ID = "acme/corpus"


class FakeHub:
    """Serves `files` ({repo path: bytes}) like the Hugging Face hub: the tree API (two entries a
    page, a Link header to the next), and resolve URLs with Range support. `drop_once` paths lose
    their connection half-way through the body the first time; `bad_oid` paths are listed with a
    wrong sha256. Every request is recorded as (path, Range header)."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.drop_once: set[str] = set()
        self.bad_oid: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                hub_.requests.append((url.path, self.headers.get("Range")))
                tree = f"/api/datasets/{REPO_ID}/tree/main"
                resolve = f"/datasets/{REPO_ID}/resolve/main/"
                if url.path == tree:
                    return self.tree(urllib.parse.parse_qs(url.query))
                if url.path.startswith(resolve):
                    return self.resolve(urllib.parse.unquote(url.path[len(resolve):]))
                self.send_error(404)

            def tree(self, query):
                entries = [{"type": "directory", "path": "data", "oid": "0" * 40, "size": 0}]
                for path, body in sorted(hub_.files.items()):
                    oid = hashlib.sha256(body).hexdigest() if path not in hub_.bad_oid else "f" * 64
                    entries.append({"type": "file", "path": path, "size": len(body), "oid": "1" * 40,
                                    "lfs": {"oid": oid, "size": len(body), "pointerSize": 134}})
                start = int(query.get("cursor", ["0"])[0])
                page = entries[start:start + 2]
                payload = json.dumps(page).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if start + 2 < len(entries):
                    nxt = f'{self.path.split("?")[0]}?recursive=true&cursor={start + 2}'
                    self.send_header("Link", f'<{nxt}>; rel="next"')
                self.end_headers()
                self.wfile.write(payload)

            def resolve(self, path):
                if path not in hub_.files:
                    return self.send_error(404)
                body = hub_.files[path]
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if path in hub_.drop_once:
                    hub_.drop_once.discard(path)
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def ranges(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p.endswith("/" + path)]


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


def test_download_lists_pages_filters_and_verifies(tmp_path, shards):
    with FakeHub(shards) as server:
        spec = hub.parse_spec(f"{REPO_ID}:data/train-*.parquet")
        paths = hub.download(spec, tmp_path / "cache", base=server.url, quiet=True)
        assert [p.relative_to(hub.local_dir(tmp_path / "cache", spec)).as_posix() for p in paths] == [
            "data/train-00000.parquet", "data/train-00001.parquet"]
        assert all(p.read_bytes() == shards[f"data/{p.name}"] for p in paths)
        tree_calls = [p for p, _ in server.requests if "/api/" in p]
        assert len(tree_calls) == 3  # 5 entries, 2 a page
        before = len(server.requests)
        hub.download(spec, tmp_path / "cache", base=server.url, quiet=True)  # in place: nothing fetched again
        assert not any("/resolve/" in p for p, _ in server.requests[before:])


def test_dropped_connection_resumes_with_range(tmp_path, shards):
    path = "data/train-00001.parquet"
    body = shards[path]
    with FakeHub(shards) as server:
        server.drop_once.add(path)
        spec = hub.parse_spec(f"{REPO_ID}:{path}")
        [out] = hub.download(spec, tmp_path / "cache", base=server.url, backoff_s=0.01, quiet=True)
        assert out.read_bytes() == body
        assert server.ranges(path) == [None, f"bytes={len(body) // 2}-"]


def test_interrupted_download_resumes_on_the_next_run(tmp_path, shards):
    """With no retries left the download stops with a clear error, keeping `.part`; the next
    call asks only for the missing bytes."""
    path = "data/train-00000.parquet"
    body = shards[path]
    with FakeHub(shards) as server:
        server.drop_once.add(path)
        spec = hub.parse_spec(f"{REPO_ID}:{path}")
        with pytest.raises(UserError, match="run the same command again to resume"):
            hub.download(spec, tmp_path / "cache", base=server.url, retries=0, quiet=True)
        dest = hub.local_dir(tmp_path / "cache", spec) / path
        part = dest.with_name(dest.name + ".part")
        assert part.stat().st_size == len(body) // 2 and not dest.exists()
        [out] = hub.download(spec, tmp_path / "cache", base=server.url, retries=0, quiet=True)
        assert out.read_bytes() == body and not part.exists()
        assert server.ranges(path) == [None, f"bytes={len(body) // 2}-"]


def test_checksum_mismatch_is_a_clear_error(tmp_path, shards):
    path = "data/train-00000.parquet"
    with FakeHub(shards) as server:
        server.bad_oid.add(path)
        spec = hub.parse_spec(f"{REPO_ID}:{path}")
        with pytest.raises(UserError, match=r"checksum mismatch for data/train-00000.parquet.*sha256"):
            hub.download(spec, tmp_path / "cache", base=server.url, quiet=True)
        dest = hub.local_dir(tmp_path / "cache", spec) / path
        assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_missing_dataset_and_no_match(tmp_path, shards):
    with FakeHub(shards) as server:
        with pytest.raises(UserError, match="HTTP 404"):
            hub.download(hub.parse_spec("acme/nothing"), tmp_path, base=server.url, retries=0, quiet=True)
        with pytest.raises(UserError, match="no file matching"):
            hub.download(hub.parse_spec(f"{REPO_ID}:*.csv"), tmp_path, base=server.url, quiet=True)


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
