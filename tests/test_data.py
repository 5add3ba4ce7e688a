"""Dataset preparation: deterministic content-hash splits, de-duplication, canaries, bad inputs."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import DUPLICATED_DOC, SMALL_FRACTIONS, write_corpus
from gpt.data import (CANARIES_PER_SPLIT, CANARY_COPIES, CANARY_HEX_CHARS, CANARY_PREFIX, DEFAULT_FRACTIONS,
                      EVAL_SPLITS, MIN_EVAL_TOKENS, SPLITS, prepare, split_of)
from gpt.errors import UserError


def split_bytes(dataset) -> dict[str, bytes]:
    """Every split's token array as bytes (the byte tokenizer: token id = byte value)."""
    out = {}
    for split in SPLITS:
        tokens = np.asarray(dataset.tokens(split))
        assert tokens.max() < 256
        out[split] = tokens.astype(np.uint8).tobytes()
    return out


@pytest.fixture(scope="module")
def small_bytes(small_dataset):
    return split_bytes(small_dataset)


# ---------------------------------------------------------------- splits


def test_preparing_the_same_source_twice_gives_the_same_key_hashes_and_files(small_source, small_dataset, tmp_path):
    again = prepare(small_source, root=tmp_path / "again", fractions=SMALL_FRACTIONS)
    first, second = small_dataset.manifest, again.manifest
    for field in ("key", "hashes", "documents", "tokens", "bytes", "canaries", "duplicates_removed"):
        assert first[field] == second[field], field
    assert again.path.name == small_dataset.path.name
    for split in SPLITS:  # the manifest hashes are the hashes of the files on disk
        assert hashlib.sha256(again.split_path(split).read_bytes()).hexdigest() == second["hashes"][split]
        assert again.split_path(split).read_bytes() == small_dataset.split_path(split).read_bytes()


def test_a_prepared_dataset_is_reused_from_the_cache_without_rewriting(small_source, small_dataset):
    stamp = (small_dataset.path / "manifest.json").stat().st_mtime_ns
    again = prepare(small_source, root=small_dataset.path.parent, fractions=SMALL_FRACTIONS)
    assert again.path == small_dataset.path
    assert (again.path / "manifest.json").stat().st_mtime_ns == stamp
    assert not [p for p in small_dataset.path.parent.iterdir() if ".tmp" in p.name]


def test_each_document_is_in_exactly_one_split_the_one_its_content_hashes_to(small_dataset, small_docs, small_bytes):
    assert sum(small_dataset.manifest["documents"].values()) == len(small_docs)
    for i, doc in enumerate(small_docs):
        found = [s for s in SPLITS if doc.encode() in small_bytes[s]]
        assert found == [split_of(doc, small_dataset.manifest["fractions"])], f"document {i} is in {found}"
    for split in SPLITS:  # and the manifest counts agree with the content
        expected = sum(1 for d in small_docs if split_of(d, SMALL_FRACTIONS) == split)
        assert small_dataset.manifest["documents"][split] == expected
        assert small_dataset.manifest["bytes"][split] == sum(
            len(d.encode()) for d in small_docs if split_of(d, SMALL_FRACTIONS) == split)


def test_adding_documents_moves_no_existing_document_to_another_split(small_docs, tmp_path):
    base = small_docs[:150]
    extra = [f"# extra document {i}\n" + d[::-1] for i, d in enumerate(small_docs[150:])]
    before = prepare(f"text:{write_corpus(tmp_path / 'a', base)}/*.txt", root=tmp_path / "d", fractions=SMALL_FRACTIONS)
    after = prepare(f"text:{write_corpus(tmp_path / 'b', base + extra)}/*.txt", root=tmp_path / "d",
                    fractions=SMALL_FRACTIONS)
    assert before.path != after.path
    b, a = split_bytes(before), split_bytes(after)
    for doc in base:
        assert [s for s in SPLITS if doc.encode() in b[s]] == [s for s in SPLITS if doc.encode() in a[s]]


def test_token_bytes_are_what_the_dataset_tokenizer_decodes(small_dataset, small_bytes):
    for split in SPLITS:
        head = np.asarray(small_dataset.tokens(split)[:4096])
        assert small_dataset.tokenizer.decode(head) == small_bytes[split][:4096].decode("utf-8", errors="replace")


def test_exact_duplicate_documents_are_removed(small_dataset, small_corpus, small_bytes):
    duplicated = (small_corpus / DUPLICATED_DOC).read_bytes()
    assert (small_corpus / f"copy_of_{DUPLICATED_DOC}").read_bytes() == duplicated
    assert small_dataset.manifest["duplicates_removed"] == 1
    assert sum(small_bytes[s].count(duplicated) for s in SPLITS) == 1


def test_every_eval_split_holds_at_least_the_minimum_of_real_bytes(small_dataset):
    m = small_dataset.manifest
    for split in EVAL_SPLITS:
        assert m["bytes"][split] >= MIN_EVAL_TOKENS
        # the token count adds exactly the planted canary lines to the real bytes
        line = 1 + len(CANARY_PREFIX) + CANARY_HEX_CHARS + 1  # "\n# canary <hex>\n"
        assert m["tokens"][split] == m["bytes"][split] + CANARIES_PER_SPLIT * CANARY_COPIES * line
    assert m["tokens"]["train"] == m["bytes"]["train"]


def test_stdlib_defaults_leave_at_least_250k_bytes_in_each_eval_split(stdlib_dataset):
    m = stdlib_dataset.manifest
    assert m["source"] == "stdlib" and m["fractions"] == DEFAULT_FRACTIONS
    for split in EVAL_SPLITS:
        assert m["bytes"][split] >= 250_000, (split, m["bytes"][split])
    assert m["bytes"]["train"] > 10 * m["bytes"]["val"]


# ---------------------------------------------------------------- canaries


@pytest.mark.parametrize("which", ["small_dataset", "stdlib_dataset"])
def test_canaries_are_planted_in_their_eval_split_only_and_controls_nowhere(which, request):
    dataset = request.getfixturevalue(which)
    info = dataset.manifest["canaries"]
    data = split_bytes(dataset)
    groups = list(EVAL_SPLITS) + ["control"]
    assert all(len(info[g]) >= 32 and len(set(info[g])) == len(info[g]) for g in groups)
    assert len(set().union(*(info[g] for g in groups))) == sum(len(info[g]) for g in groups)
    for group in groups:
        for canary in info[group]:
            assert re.fullmatch(f"[0-9a-f]{{{CANARY_HEX_CHARS}}}", canary)
            for split in SPLITS:
                count = data[split].count(canary.encode())
                if split == group:
                    assert count == CANARY_COPIES, (group, canary)
                    assert data[split].count(f"{CANARY_PREFIX}{canary}\n".encode()) == CANARY_COPIES
                else:  # never in train, never in another eval split; controls in no split at all
                    assert count == 0, (group, canary, split)


def test_the_canaries_are_fixed_by_the_dataset_seed(small_source, small_dataset, tmp_path):
    other = prepare(small_source, root=tmp_path, fractions=SMALL_FRACTIONS, seed=1)
    assert other.manifest["canaries"]["val"] != small_dataset.manifest["canaries"]["val"]
    assert other.manifest["documents"] == small_dataset.manifest["documents"]  # same documents, same splits
    assert other.manifest["hashes"]["train"] == small_dataset.manifest["hashes"]["train"]
    assert other.manifest["hashes"]["val"] != small_dataset.manifest["hashes"]["val"]


# ---------------------------------------------------------------- parquet


def write_parquet(path, rows: dict) -> None:
    pq.write_table(pa.table(rows), path)


def test_parquet_source_with_a_custom_column_gives_one_document_per_row(small_docs, small_dataset, tmp_path):
    half = len(small_docs) // 2
    shards = tmp_path / "shards"
    shards.mkdir()
    # two shards; a null and an empty row are skipped; the 'text' column is a decoy
    write_parquet(shards / "a.parquet", {"id": list(range(half)) + [-1], "body": small_docs[:half] + [None],
                                         "text": ["decoy"] * (half + 1)})
    write_parquet(shards / "b.parquet", {"id": list(range(half, len(small_docs))) + [-2],
                                         "body": small_docs[half:] + [""], "text": ["decoy"] * (len(small_docs) - half + 1)})
    dataset = prepare(f"parquet:{shards}/*.parquet:body", root=tmp_path / "data", fractions=SMALL_FRACTIONS)
    m = dataset.manifest
    # the same documents as the text corpus, so the same content-hash splits
    assert m["documents"] == small_dataset.manifest["documents"]
    assert m["bytes"] == small_dataset.manifest["bytes"]
    assert m["duplicates_removed"] == 0
    data = split_bytes(dataset)
    assert not any(b"decoy" in data[s] for s in SPLITS)
    for doc in small_docs[::10]:
        assert [s for s in SPLITS if doc.encode() in data[s]] == [split_of(doc, SMALL_FRACTIONS)]


# ---------------------------------------------------------------- bad inputs


def assert_user_error(source, *fragments, root, **kwargs):
    with pytest.raises(UserError) as err:
        prepare(source, root=root, **kwargs)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_a_glob_that_matches_no_file_is_a_user_error_naming_the_glob(tmp_path):
    assert_user_error(f"text:{tmp_path}/nothing/*.txt", "matched no files", f"{tmp_path}/nothing/*.txt", root=tmp_path)


def test_a_glob_that_matches_only_directories_is_a_user_error(tmp_path):
    (tmp_path / "folder.txt").mkdir()
    assert_user_error(f"text:{tmp_path}/*.txt", "matched no files", root=tmp_path / "data")


def test_a_broken_symlink_in_the_corpus_is_a_user_error_naming_it(small_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for p in sorted(small_corpus.iterdir()):
        (corpus / p.name).symlink_to(p)
    (corpus / "zz_gone.txt").symlink_to(tmp_path / "deleted.txt")
    assert_user_error(f"text:{corpus}/*.txt", "cannot read", "zz_gone.txt", "broken symlink", root=tmp_path / "data",
                      fractions=SMALL_FRACTIONS)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file; the broken-symlink test covers root")
def test_an_unreadable_file_is_a_user_error_naming_it(tmp_path):
    (tmp_path / "secret.txt").write_text("x" * 100)
    (tmp_path / "secret.txt").chmod(0)
    assert_user_error(f"text:{tmp_path}/*.txt", "cannot read", "secret.txt", "ermission", root=tmp_path / "data")


def test_parquet_without_the_named_column_is_a_user_error_listing_its_columns(tmp_path):
    write_parquet(tmp_path / "x.parquet", {"content": ["a document"], "id": [1]})
    assert_user_error(f"parquet:{tmp_path}/*.parquet", "no column 'text'", "content, id", "parquet:GLOB:COLUMN",
                      root=tmp_path / "data")
    assert_user_error(f"parquet:{tmp_path}/*.parquet:body", "no column 'body'", root=tmp_path / "data")


def test_a_file_that_is_not_parquet_is_a_user_error_naming_it(tmp_path):
    (tmp_path / "fake.parquet").write_text("just text")
    assert_user_error(f"parquet:{tmp_path}/*.parquet", "cannot read parquet file", "fake.parquet", root=tmp_path / "d")


def test_a_corpus_too_small_for_its_splits_is_a_user_error(small_docs, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", small_docs[:10])  # ~20 KB: too little for train and eval
    message = assert_user_error(f"text:{corpus}/*.txt", "too small", "needs at least", root=tmp_path / "data")
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())  # nothing half-written
    assert "split got" in message


@pytest.mark.parametrize("source", ["nope", "text:", "parquet:", "stdlib:extra"])
def test_an_unknown_source_spec_is_a_user_error_listing_the_kinds(source, tmp_path):
    assert_user_error(source, "unknown data source", "text:GLOB", root=tmp_path)


@pytest.mark.parametrize("fractions", [{"dev": 0.1}, {"val": 0.0}, {"val": 0.5, "heldout": 0.4}])
def test_bad_split_fractions_are_a_user_error(fractions, small_source, tmp_path):
    assert_user_error(small_source, "fraction", root=tmp_path, fractions=fractions)


# ---------------------------------------------------------------- CLI


def test_evo_prepare_prints_the_dataset_summary(stdlib_dataset, stdlib_data_root):
    proc = subprocess.run([sys.executable, "-m", "evo.cli", "prepare", "--out", str(stdlib_data_root)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    m = stdlib_dataset.manifest
    assert f"dataset:   {stdlib_dataset.path}" in lines  # the session's dataset, found in the cache
    assert "source:    stdlib" in lines
    for split in SPLITS:
        assert (f"{split + ':':<10} {m['documents'][split]} documents, {m['bytes'][split]} bytes, "
                f"{m['tokens'][split]} tokens") in lines
    assert f"duplicates removed: {m['duplicates_removed']}" in lines


def test_evo_prepare_reports_a_user_error_in_one_line_with_exit_code_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "evo.cli", "prepare", "--data", f"text:{tmp_path}/none/*.txt",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "matched no files" in proc.stderr
    assert "Traceback" not in proc.stderr
