"""Dataset preparation: secret-keyed content-hash splits, de-duplication, canaries outside the
scored stream, chunking of big documents, document roots, bad inputs."""
from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import DUPLICATED_DOC, SMALL_FRACTIONS, SMALL_SECRET, write_corpus
from gpt import data as data_mod
from gpt.data import (BUILTIN_EXCLUDED, CANARIES_PER_SPLIT, CANARY_COPIES, CANARY_HEX_CHARS, CANARY_PREFIX, CHUNK_ABOVE_BYTES,
                      CHUNK_BYTES, CONTROL_CANARIES, DEFAULT_FRACTIONS, EVAL_SPLITS, MIN_EVAL_TOKENS,
                      MIN_SPLIT_DOCUMENTS, SPLITS, canary_text, check_secret, chunk_text, document_roots, documents,
                      iter_documents, prepare, split_of)
from gpt.errors import UserError
from gpt.sources import SOURCE_GRAMMAR, Source, parse_source

OTHER_SECRET = "11" * 16


def split_bytes(dataset) -> dict[str, bytes]:
    """Every split's token array as bytes (the byte tokenizer: token id = byte value)."""
    out = {}
    for split in SPLITS:
        tokens = np.asarray(dataset.tokens(split))
        assert tokens.max() < 256
        out[split] = tokens.astype(np.uint8).tobytes()
    return out


def text_bytes(dataset, split) -> bytes:
    return np.asarray(dataset.text_tokens(split)).astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def small_bytes(small_dataset):
    return split_bytes(small_dataset)


def docs_of(docs, split, secret, fractions=SMALL_FRACTIONS) -> list[str]:
    return [d for d in docs if split_of(d, fractions, secret) == split]


def prose(rng: random.Random, n_bytes: int) -> str:
    """Paragraphs of a few lines of random words, separated by blank lines (tinyshakespeare-like)."""
    words = ["the", "king", "shall", "not", "speak", "of", "it", "again", "my", "lord", "thou", "art", "a",
             "villain", "and", "yet", "I", "love", "thee", "well", "go", "to", "Rome"]
    paras, size = [], 0
    while size < n_bytes:
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + "."
                 for _ in range(rng.randint(1, 6))]
        para = f"{rng.choice(['KING', 'LEAR', 'FOOL', 'KENT'])}:\n" + "\n".join(lines) + "\n\n"
        paras.append(para)
        size += len(para)
    return "".join(paras)


# ---------------------------------------------------------------- splits


def test_preparing_the_same_source_with_the_same_secret_gives_the_same_key_hashes_and_files(
        small_source, small_dataset, tmp_path):
    again = prepare(small_source, root=tmp_path / "again", fractions=SMALL_FRACTIONS, secret=SMALL_SECRET)
    first, second = small_dataset.manifest, again.manifest
    for field in ("key", "secret", "hashes", "documents", "tokens", "scored_tokens", "bytes", "canaries",
                  "canary_spans", "duplicates_removed"):
        assert first[field] == second[field], field
    assert first["secret"] == SMALL_SECRET
    assert again.path.name == small_dataset.path.name
    for split in SPLITS:  # the manifest hashes are the hashes of the files on disk
        assert hashlib.sha256(again.split_path(split).read_bytes()).hexdigest() == second["hashes"][split]
        assert again.split_path(split).read_bytes() == small_dataset.split_path(split).read_bytes()


def test_a_prepared_dataset_is_reused_from_the_cache_without_rewriting(small_source, small_dataset):
    stamp = (small_dataset.path / "manifest.json").stat().st_mtime_ns
    again = prepare(small_source, root=small_dataset.path.parent, fractions=SMALL_FRACTIONS, secret=SMALL_SECRET)
    assert again.path == small_dataset.path
    assert (again.path / "manifest.json").stat().st_mtime_ns == stamp
    assert not [p for p in small_dataset.path.parent.iterdir() if ".tmp" in p.name]


def test_each_document_is_in_exactly_one_split_the_one_its_keyed_hash_gives(small_dataset, small_docs, small_bytes):
    m = small_dataset.manifest
    assert sum(m["documents"].values()) == len(small_docs)
    for i, doc in enumerate(small_docs):
        found = [s for s in SPLITS if doc.encode() in small_bytes[s]]
        assert found == [split_of(doc, m["fractions"], m["secret"])], f"document {i} is in {found}"
    for split in SPLITS:  # and the manifest counts agree with the content
        expected = docs_of(small_docs, split, SMALL_SECRET)
        assert m["documents"][split] == len(expected)
        assert m["bytes"][split] == sum(len(d.encode()) for d in expected)


def test_split_of_is_uniform_and_depends_on_the_secret(small_docs):
    a = [split_of(d, SMALL_FRACTIONS, SMALL_SECRET) for d in small_docs]
    b = [split_of(d, SMALL_FRACTIONS, OTHER_SECRET) for d in small_docs]
    assert a != b and sum(x != y for x, y in zip(a, b)) > len(small_docs) // 10
    assert [split_of(d, SMALL_FRACTIONS, "ab" * 16) for d in small_docs] == \
        [split_of(d, SMALL_FRACTIONS, "AB" * 16) for d in small_docs]  # the secret is bytes: hex case does not matter
    for split in EVAL_SPLITS:  # about 10% each (200 documents)
        assert 5 <= a.count(split) <= 40, (split, a.count(split))


def test_adding_documents_moves_no_existing_document_to_another_split(small_docs, tmp_path):
    base = small_docs[:150]
    extra = [f"# extra document {i}\n" + d[::-1] for i, d in enumerate(small_docs[150:])]
    before = prepare(f"text:{write_corpus(tmp_path / 'a', base)}/*.txt", root=tmp_path / "d",
                     fractions=SMALL_FRACTIONS, secret=SMALL_SECRET)
    after = prepare(f"text:{write_corpus(tmp_path / 'b', base + extra)}/*.txt", root=tmp_path / "d",
                    fractions=SMALL_FRACTIONS, secret=SMALL_SECRET)
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
        # the file adds exactly the planted canary lines to the real bytes; the scored stream is the real bytes
        line = 1 + len(CANARY_PREFIX) + CANARY_HEX_CHARS + 1  # "\n# canary <hex>\n"
        assert m["tokens"][split] == m["bytes"][split] + CANARIES_PER_SPLIT * CANARY_COPIES * line
        assert m["scored_tokens"][split] == m["bytes"][split] == len(small_dataset.text_tokens(split))
    assert m["tokens"]["train"] == m["bytes"]["train"] == m["scored_tokens"]["train"]
    assert m["warnings"] == []


def test_builtin_defaults_leave_at_least_250k_bytes_in_each_eval_split(default_dataset):
    m = default_dataset.manifest
    assert m["source"] == "builtin" and m["fractions"] == DEFAULT_FRACTIONS
    for split in EVAL_SPLITS:
        assert m["bytes"][split] >= 250_000, (split, m["bytes"][split])
        assert m["documents"][split] >= MIN_SPLIT_DOCUMENTS
    assert m["bytes"]["train"] > 10 * m["bytes"]["val"]
    assert m["warnings"] == []
    assert re.fullmatch("[0-9a-f]{32}", m["secret"])
    assert m["document_roots"] == [os.path.realpath(data_mod.CORPUS_DIR)]
    # 411 files, those over CHUNK_ABOVE_BYTES cut into pieces
    assert sum(m["documents"].values()) > 410
    assert sum(m["bytes"].values()) == sum(len(t.encode()) for _, t in data_mod.iter_documents("builtin"))


def test_the_builtin_source_is_the_committed_documentation_archive():
    docs = list(data_mod.iter_documents("builtin"))
    assert len(docs) == 411 - len(BUILTIN_EXCLUDED) and all(name.endswith(".rst.txt") for name, _ in docs)
    assert not {name for name, _ in docs} & set(BUILTIN_EXCLUDED)  # the license page: its texts are elsewhere too
    assert [name for name, _ in docs] == sorted(name for name, _ in docs)
    assert 8_000_000 < sum(len(t.encode()) for _, t in docs) < 10_000_000
    chunks = list(documents("builtin"))
    assert max(len(t.encode()) for _, t in chunks) <= CHUNK_ABOVE_BYTES  # the 29 files over it are cut
    assert "".join(t for n, t in chunks if n.startswith("library/os.rst.txt")) == dict(docs)["library/os.rst.txt"]


# ---------------------------------------------------------------- the secret


def test_random_secrets_give_different_splits_and_canaries_under_one_cache_key(small_source, tmp_path):
    a = prepare(small_source, root=tmp_path / "a", fractions=SMALL_FRACTIONS)
    b = prepare(small_source, root=tmp_path / "b", fractions=SMALL_FRACTIONS)
    ma, mb = a.manifest, b.manifest
    assert a.path.name == b.path.name  # the key ignores a random secret ...
    assert ma["secret"] != mb["secret"] and re.fullmatch("[0-9a-f]{32}", ma["secret"])
    assert ma["canaries"]["val"] != mb["canaries"]["val"] and ma["canaries"]["control"] != mb["canaries"]["control"]
    assert ma["hashes"]["val"] != mb["hashes"]["val"] and ma["hashes"]["train"] != mb["hashes"]["train"]
    assert split_bytes(a)["val"] != split_bytes(b)["val"]
    again = prepare(small_source, root=tmp_path / "a", fractions=SMALL_FRACTIONS)  # ... so it is found again
    assert again.path == a.path and again.manifest["secret"] == ma["secret"]
    # an explicit secret is part of the key
    fixed = prepare(small_source, root=tmp_path / "a", fractions=SMALL_FRACTIONS, secret=SMALL_SECRET)
    assert fixed.path != a.path and fixed.manifest["secret"] == SMALL_SECRET


def test_the_canaries_and_their_places_are_fixed_by_the_secret(small_source, small_dataset, tmp_path):
    other = prepare(small_source, root=tmp_path, fractions=SMALL_FRACTIONS, secret=OTHER_SECRET)
    again = prepare(small_source, root=tmp_path / "again", fractions=SMALL_FRACTIONS, secret=OTHER_SECRET)
    mo, ms = other.manifest, small_dataset.manifest
    assert other.path != small_dataset.path
    for group in list(EVAL_SPLITS) + ["control"]:
        assert set(mo["canaries"][group]).isdisjoint(ms["canaries"][group])
    assert mo["hashes"] != ms["hashes"]
    assert again.manifest["canary_spans"] == mo["canary_spans"] and again.manifest["hashes"] == mo["hashes"]


@pytest.mark.parametrize("bad", ["", "xyz", "abc", "00 11", "0x00"])
def test_a_secret_that_is_not_hex_is_a_user_error(bad, small_source, tmp_path):
    assert_user_error(small_source, "hex", root=tmp_path, secret=bad)


def test_secrets_are_normalised_to_lower_case():
    assert check_secret("ABCD") == "abcd" and check_secret(None) is None


# ---------------------------------------------------------------- canaries


@pytest.mark.parametrize("which", ["small_dataset", "default_dataset"])
def test_canaries_are_planted_in_their_eval_split_only_and_controls_nowhere(which, request):
    dataset = request.getfixturevalue(which)
    info = dataset.manifest["canaries"]
    data = split_bytes(dataset)
    groups = list(EVAL_SPLITS) + ["control"]
    assert all(len(info[g]) == CANARIES_PER_SPLIT for g in EVAL_SPLITS) and len(info["control"]) == CONTROL_CANARIES
    assert all(len(set(info[g])) == len(info[g]) for g in groups)
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


@pytest.mark.parametrize("which", ["small_dataset", "default_dataset"])
def test_canary_spans_are_exactly_the_planted_canary_texts(which, request):
    dataset = request.getfixturevalue(which)
    m = dataset.manifest
    assert dataset.canary_spans("train").shape == (0, 3)
    for split in EVAL_SPLITS:
        spans = dataset.canary_spans(split)
        tokens = np.asarray(dataset.tokens(split))
        assert spans.dtype == np.int64 and spans.shape == (CANARIES_PER_SPLIT * CANARY_COPIES, 3)
        assert spans.tolist() == sorted(spans.tolist()) == m["canary_spans"][split]
        assert (spans[1:, 0] >= spans[:-1, 1]).all() and (spans[:, 1] > spans[:, 0]).all()
        assert spans[-1, 1] <= len(tokens)
        assert np.bincount(spans[:, 2], minlength=CANARIES_PER_SPLIT).tolist() == [CANARY_COPIES] * CANARIES_PER_SPLIT
        for start, end, index in spans:
            assert dataset.tokenizer.decode(tokens[start:end]) == canary_text(m["canaries"][split][index])


def test_text_tokens_are_the_documents_of_the_split_in_file_order_without_any_canary(small_dataset, small_docs):
    m = small_dataset.manifest
    for split in EVAL_SPLITS:
        text = text_bytes(small_dataset, split)
        assert text == "".join(docs_of(small_docs, split, SMALL_SECRET)).encode()
        assert len(text) == m["scored_tokens"][split]
        assert CANARY_PREFIX.encode() not in text
        for group in list(EVAL_SPLITS) + ["control"]:  # the canary share of the scored tokens is 0
            assert not any(c.encode() in text for c in m["canaries"][group])
    assert np.array_equal(small_dataset.text_tokens("train"), small_dataset.tokens("train"))


def test_text_tokens_of_the_default_dataset_hold_no_canary(default_dataset):
    m = default_dataset.manifest
    for split in EVAL_SPLITS:
        text = text_bytes(default_dataset, split)
        assert len(text) == m["scored_tokens"][split] == m["bytes"][split]
        assert not any(c.encode() in text for c in m["canaries"][split])


def test_a_dataset_without_canary_spans_is_refused(small_dataset, tmp_path):
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(small_dataset.path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["canary_spans"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="prepare it again"):
        data_mod.Dataset(old).text_tokens("val")


# ---------------------------------------------------------------- chunking


def test_short_documents_are_kept_whole():
    text = "a paragraph\n\n" * 100
    assert chunk_text(text) == [text]
    at_limit = "x" * (CHUNK_ABOVE_BYTES - 1) + "\n"
    assert chunk_text(at_limit) == [at_limit]


def test_a_long_document_is_cut_at_blank_lines_into_about_chunk_bytes():
    text = prose(random.Random(0), 300_000)
    chunks = chunk_text(text)
    assert "".join(chunks) == text
    sizes = [len(c.encode()) for c in chunks]
    assert all(CHUNK_BYTES // 2 <= n <= CHUNK_BYTES for n in sizes[:-1]), sizes  # paragraphs are small here
    assert CHUNK_BYTES // 2 <= sizes[-1] <= CHUNK_BYTES * 3 // 2  # a short tail joins the document before it
    assert all(c.endswith("\n\n") for c in chunks)  # each ends at a paragraph boundary


def test_a_long_paragraph_is_cut_at_lines_and_a_long_line_at_character_boundaries():
    lines = "".join(f"line {i} of a paragraph without blank lines\n" for i in range(4000))  # ~180 KB
    chunks = chunk_text(lines)
    assert "".join(chunks) == lines and len(chunks) > 5 and all(c.endswith("\n") for c in chunks)
    assert all(len(c.encode()) <= 3 * CHUNK_BYTES for c in chunks)
    line = "naïve 数据 😀 " * 20_000  # one 380 KB line of 1-4 byte characters, no newline
    chunks = chunk_text(line)
    assert "".join(chunks) == line and len(chunks) > 10
    assert all(CHUNK_BYTES - 4 < len(c.encode()) <= CHUNK_BYTES for c in chunks[:-1])
    # mixed: a big file of a short paragraph, a huge single line, and prose
    mixed = "title\n\n" + line + "\n\n" + prose(random.Random(1), 100_000)
    assert "".join(chunk_text(mixed)) == mixed
    assert all(len(c.encode()) <= 3 * CHUNK_BYTES for c in chunk_text(mixed))


def test_a_single_big_file_like_tinyshakespeare_prepares_with_default_fractions(tmp_path, capfd):
    text = prose(random.Random(2), 1_100_000)
    (tmp_path / "input.txt").write_text(text)
    ds = prepare(f"text:{tmp_path}/input.txt", root=tmp_path / "data")  # default fractions, a random secret
    m = ds.manifest
    chunks = chunk_text(text)
    assert sum(m["documents"].values()) == len(chunks) > 40
    assert sum(m["bytes"].values()) == len(text.encode())
    for split in EVAL_SPLITS:
        assert m["bytes"][split] >= MIN_EVAL_TOKENS
        in_split = [c for c in chunks if split_of(c, m["fractions"], m["secret"]) == split]
        assert text_bytes(ds, split) == "".join(in_split).encode()  # in file order
    few = [s for s in SPLITS if m["documents"][s] < MIN_SPLIT_DOCUMENTS]
    assert [w.split()[1] for w in m["warnings"]] == few  # "the <split> split got only ..."
    err = capfd.readouterr().err
    assert all(f"warning: {w}" in err for w in m["warnings"])
    assert m["document_roots"] == [os.path.realpath(tmp_path)]


def test_a_split_of_few_documents_is_a_warning(tmp_path, capfd):
    rng = random.Random(3)
    wanted = {"val": 3, "heldout": 6, "test": 6, "train": 40}
    docs: list[str] = []
    while any(wanted.values()):
        doc = prose(rng, 2500)
        split = split_of(doc, SMALL_FRACTIONS, SMALL_SECRET)
        if wanted[split]:
            wanted[split] -= 1
            docs.append(doc)
    ds = prepare(f"text:{write_corpus(tmp_path / 'c', docs)}/*.txt", root=tmp_path / "d", fractions=SMALL_FRACTIONS,
                 secret=SMALL_SECRET)
    m = ds.manifest
    assert m["documents"] == {"train": 40, "val": 3, "heldout": 6, "test": 6}
    assert len(m["warnings"]) == 1 and "val split got only 3 document" in m["warnings"][0]
    assert f"warning: {m['warnings'][0]}" in capfd.readouterr().err


# ---------------------------------------------------------------- document roots


def test_document_roots_of_each_kind_of_source(small_corpus, small_dataset, tmp_path):
    from gpt.hub import local_dir, parse_spec

    assert small_dataset.manifest["document_roots"] == [os.path.realpath(small_corpus)]
    assert document_roots("builtin") == [os.path.realpath(data_mod.CORPUS_DIR)]
    assert document_roots("stdlib") is None and document_roots("pysource") is None
    nested = tmp_path / "nested"
    (nested / "a" / "b").mkdir(parents=True)
    (nested / "c").mkdir()
    for p in ("a/x.txt", "a/b/y.txt", "c/z.txt"):
        (nested / p).write_text("x")
    real = os.path.realpath(nested)
    assert document_roots(f"text:{nested}/**/*.txt") == [f"{real}/a", f"{real}/c"]  # minimal: a/b is inside a
    links = tmp_path / "links"
    links.mkdir()
    (links / "y.txt").symlink_to(nested / "a" / "b" / "y.txt")
    assert document_roots(f"text:{links}/*.txt") == [f"{real}/a/b"]  # where the file really is
    write_parquet(nested / "c" / "s.parquet", {"body": ["x"]})
    assert document_roots(f"parquet:{nested}/c/*.parquet:body") == [f"{real}/c"]
    cache = tmp_path / "hub"
    assert document_roots("hf:acme/docs@v1:data/*.parquet", cache_dir=cache) == [
        os.path.realpath(local_dir(cache, parse_spec("acme/docs@v1:data/*.parquet")))]


def test_the_same_corpus_in_another_folder_adds_its_root_to_the_cached_dataset(small_docs, tmp_path):
    one = write_corpus(tmp_path / "one", small_docs)
    two = write_corpus(tmp_path / "two", small_docs)
    first = prepare(f"text:{one}/*.txt", root=tmp_path / "d", fractions=SMALL_FRACTIONS)
    second = prepare(f"text:{two}/*.txt", root=tmp_path / "d", fractions=SMALL_FRACTIONS)
    assert second.path == first.path
    assert second.manifest["document_roots"] == sorted([os.path.realpath(one), os.path.realpath(two)])


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
    dataset = prepare(f"parquet:{shards}/*.parquet:body", root=tmp_path / "data", fractions=SMALL_FRACTIONS,
                      secret=SMALL_SECRET)
    m = dataset.manifest
    # the same documents and secret as the text corpus, so the same splits
    assert m["documents"] == small_dataset.manifest["documents"]
    assert m["bytes"] == small_dataset.manifest["bytes"]
    assert m["duplicates_removed"] == 0
    assert m["document_roots"] == [os.path.realpath(shards)]
    data = split_bytes(dataset)
    assert not any(b"decoy" in data[s] for s in SPLITS)
    for doc in small_docs[::10]:
        assert [s for s in SPLITS if doc.encode() in data[s]] == [split_of(doc, SMALL_FRACTIONS, SMALL_SECRET)]


def test_a_parquet_row_over_the_chunk_limit_is_cut_too(tmp_path):
    big = prose(random.Random(4), 200_000)
    write_parquet(tmp_path / "x.parquet", {"text": [big, "small row"]})
    docs = [t for _, t in documents(f"parquet:{tmp_path}/*.parquet")]
    assert docs[-1] == "small row" and "".join(docs[:-1]) == big and len(docs) > 5


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


@pytest.mark.parametrize("slash", ["", "/"])
def test_a_directory_instead_of_a_glob_is_a_user_error_suggesting_one(slash, small_corpus, tmp_path):
    assert_user_error(f"text:{small_corpus}{slash}", "is a directory", f"text:'{small_corpus}/**/*.txt'",
                      root=tmp_path)
    assert_user_error(f"parquet:{small_corpus}", "is a directory", f"parquet:'{small_corpus}/**/*.parquet'",
                      root=tmp_path)


def test_files_that_are_not_utf8_text_are_a_user_error_naming_them(small_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for p in sorted(small_corpus.iterdir()):
        (corpus / p.name).symlink_to(p)
    (corpus / "latin1.txt").write_bytes("café crème\n".encode("latin-1"))
    (corpus / "nul.txt").write_bytes(b"text with a \x00 byte\n")
    message = assert_user_error(f"text:{corpus}/*.txt", "2 of the", "latin1.txt (not UTF-8", "nul.txt (NUL bytes)",
                                "exclude them from the glob", root=tmp_path / "data", fractions=SMALL_FRACTIONS)
    assert "doc_0001.txt" not in message
    for i in range(12):
        (corpus / f"z{i:02d}.bin.txt").write_bytes(bytes([0xFF, 0xFE, i]))
    message = assert_user_error(f"text:{corpus}/*.txt", "14 of the", "and 4 more", root=tmp_path / "data",
                                fractions=SMALL_FRACTIONS)
    assert message.count(" (NUL bytes)") + message.count(" (not UTF-8") == 10
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


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


@pytest.mark.parametrize("secret", [None, SMALL_SECRET])
def test_a_corpus_too_small_for_its_splits_is_a_user_error(secret, small_docs, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", small_docs[:10])  # ~20 KB: too little for train and eval
    message = assert_user_error(f"text:{corpus}/*.txt", "too small", "needs at least", root=tmp_path / "data",
                                secret=secret)
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())  # nothing half-written
    assert "split got" in message


# ---------------------------------------------------------------- the source grammar


@pytest.mark.parametrize("spec, parts", [
    ("builtin", Source("builtin")),
    ("stdlib", Source("stdlib")),
    ("pysource", Source("pysource")),
    ("text:corpus/**/*.txt", Source("text", glob="corpus/**/*.txt")),
    ("text:~/c:d/*.txt", Source("text", glob="~/c:d/*.txt")),  # text: has no column: every ':' is the glob's
    ("parquet:shards/*.parquet", Source("parquet", glob="shards/*.parquet", column="text")),
    ("parquet:shards/*.parquet:body", Source("parquet", glob="shards/*.parquet", column="body")),
    ("parquet:a:b/*.parquet", Source("parquet", glob="a:b/*.parquet", column="text")),  # '/' in the tail: a glob
    ("parquet:x:y.parquet", Source("parquet", glob="x:y.parquet", column="text")),  # '.' in the tail: a glob
    ("hf:acme/corpus", Source("hf", repo="acme/corpus", revision="main", pattern="*.parquet", column="text")),
    ("hf:acme/corpus@v2", Source("hf", repo="acme/corpus", revision="v2", pattern="*.parquet", column="text")),
    ("hf:HuggingFaceFW/fineweb-edu:sample/10BT/*.parquet",
     Source("hf", repo="HuggingFaceFW/fineweb-edu", revision="main", pattern="sample/10BT/*.parquet", column="text")),
    ("hf:acme/code@v2:data/*.parquet:content",
     Source("hf", repo="acme/code", revision="v2", pattern="data/*.parquet", column="content")),
    ("hf:acme/code::content", Source("hf", repo="acme/code", revision="main", pattern="*.parquet", column="content")),
])
def test_every_form_of_the_grammar_parses_to_its_parts(spec, parts):
    assert parse_source(spec) == parts
    assert parse_source(spec).runtime == (parts.kind in ("stdlib", "pysource"))


def test_the_grammar_names_every_kind_and_what_is_never_sealed():
    for form in ("builtin", "stdlib", "pysource", "text:GLOB", "parquet:GLOB[:COLUMN]",
                 "hf:OWNER/NAME[@REVISION][:PATTERN[:COLUMN]]"):
        assert form in SOURCE_GRAMMAR
    assert "never sealed" in SOURCE_GRAMMAR and data_mod.SOURCE_GRAMMAR is SOURCE_GRAMMAR


@pytest.mark.parametrize("spec", ["text:", "parquet:", "hf:", "hf:noslash", "nonsense", "hf:a/b@", "hf:a/b@..",
                                  "hf:a b/c", "hf:a/b:x:y:z", "hf:/b", "parquet::body", "stdlib:extra",
                                  "builtin:x", "builtin:", "", "Builtin", " builtin"])
def test_a_malformed_spec_is_a_user_error_naming_it_and_the_grammar(spec, tmp_path):
    with pytest.raises(UserError) as err:
        parse_source(spec)
    message = str(err.value)
    assert repr(spec) in message and SOURCE_GRAMMAR in message, message
    for entry in (lambda: prepare(spec, root=tmp_path), lambda: document_roots(spec),
                  lambda: iter_documents(spec)):  # nothing in gpt parses a spec on its own
        with pytest.raises(UserError) as again:
            entry()
        assert str(again.value) == message
    assert not any(tmp_path.iterdir())  # refused before anything was read or written


def test_an_hf_spec_without_the_prefix_goes_through_the_same_parser():
    from gpt import hub

    with pytest.raises(UserError) as err:
        hub.parse_spec("noslash")
    assert "'hf:noslash'" in str(err.value) and SOURCE_GRAMMAR in str(err.value)
    assert hub.HubSpec.of(parse_source("hf:a/b@r:p:c")) == hub.parse_spec("a/b@r:p:c") == hub.HubSpec("a/b", "r", "p", "c")


def test_a_spec_that_parses_but_names_no_files_gets_the_glob_errors(small_corpus, tmp_path):
    for spec in (f"text:{tmp_path}/none/*.txt", f"parquet:{tmp_path}/none/*.parquet:body", f"text:{small_corpus}",
                 f"parquet:{small_corpus}"):
        parse_source(spec)  # well formed: the problem is what the glob matches
    assert_user_error(f"parquet:{tmp_path}/none/*.parquet:body", "matched no files", f"{tmp_path}/none/*.parquet",
                      root=tmp_path / "d")
    message = assert_user_error(f"text:{small_corpus}", "is a directory, not a glob of files",
                                f"text:'{small_corpus}/**/*.txt'", root=tmp_path / "d")
    assert SOURCE_GRAMMAR not in message  # not a grammar problem


@pytest.mark.parametrize("fractions", [{"dev": 0.1}, {"val": 0.0}, {"val": 0.5, "heldout": 0.4}])
def test_bad_split_fractions_are_a_user_error(fractions, small_source, tmp_path):
    assert_user_error(small_source, "fraction", root=tmp_path, fractions=fractions)


# ---------------------------------------------------------------- CLI


def test_evo_prepare_prints_the_dataset_summary(default_dataset, stdlib_data_root):
    proc = subprocess.run([sys.executable, "-m", "evo.cli", "prepare", "--out", str(stdlib_data_root)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    m = default_dataset.manifest
    assert f"dataset:   {default_dataset.path}" in lines  # the session's dataset, found in the cache
    assert "source:    builtin" in lines
    for split in SPLITS:
        assert (f"{split + ':':<10} {m['documents'][split]} documents, {m['bytes'][split]} bytes, "
                f"{m['tokens'][split]} tokens") in lines
    assert f"duplicates removed: {m['duplicates_removed']}" in lines


def test_evo_prepare_with_a_secret_makes_the_same_dataset(small_source, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "evo.cli", "prepare", "--data", small_source, "--out",
                           str(tmp_path / "cli"), "--secret", SMALL_SECRET], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    here = prepare(small_source, root=tmp_path / "here", secret=SMALL_SECRET)  # the CLI's default fractions
    assert f"dataset:   {tmp_path / 'cli' / here.path.name}" in proc.stdout.splitlines()
    made = data_mod.Dataset(tmp_path / "cli" / here.path.name)
    assert made.manifest["hashes"] == here.manifest["hashes"] and made.manifest["secret"] == SMALL_SECRET


def test_evo_prepare_reports_a_user_error_in_one_line_with_exit_code_2(tmp_path):
    for args, fragment in ([["--data", f"text:{tmp_path}/none/*.txt"], "matched no files"],
                           [["--secret", "not-hex"], "hex"]):
        proc = subprocess.run([sys.executable, "-m", "evo.cli", "prepare", *args, "--out", str(tmp_path)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: ") and fragment in proc.stderr
        assert "Traceback" not in proc.stderr
