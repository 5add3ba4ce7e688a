"""Chunking: big documents cut into pieces of about CHUNK_BYTES, so that they spread over the splits.

This module exists because real corpora often come as a few big files (tinyshakespeare is one
1.1 MB file): as single documents they could not be split at all. `documents` is what
`prepare` splits: a source's documents (gpt.sources) with every big one cut at paragraphs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from gpt.sources import iter_documents

CHUNK_ABOVE_BYTES = 64 * 2**10  # a longer document is cut into documents of about CHUNK_BYTES
CHUNK_BYTES = 16 * 2**10


def nbytes(text: str) -> int:
    """The size of `text` in UTF-8."""
    return len(text.encode("utf-8"))


def _lines(text: str) -> list[str]:
    """Lines with their "\\n" (only "\\n" ends a line: str.splitlines also cuts at \\f, \\x1c, ...)."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _paragraphs(text: str) -> Iterator[str]:
    """Runs of lines, each ended by a blank line (or the end of the text)."""
    run: list[str] = []
    for line in _lines(text):
        run.append(line)
        if not line.strip():
            yield "".join(run)
            run = []
    if run:
        yield "".join(run)


def _byte_pieces(line: str, size: int) -> Iterator[str]:
    """`line` in pieces of at most `size` bytes, each cut at a UTF-8 character boundary."""
    data = line.encode("utf-8")
    i = 0
    while i < len(data):
        j = min(i + size, len(data))
        while j < len(data) and data[j] & 0xC0 == 0x80:  # a continuation byte: not a boundary
            j -= 1
        yield data[i:j].decode("utf-8")
        i = j


def _pieces(text: str) -> Iterator[tuple[str, int]]:
    """(piece, bytes): paragraphs; a paragraph over 2*CHUNK_BYTES as lines; such a line as byte pieces."""
    limit = 2 * CHUNK_BYTES
    for para in _paragraphs(text):
        n = nbytes(para)
        if n <= limit:
            yield para, n
            continue
        for line in _lines(para):
            n = nbytes(line)
            if n <= limit:
                yield line, n
            else:
                for piece in _byte_pieces(line, CHUNK_BYTES):
                    yield piece, nbytes(piece)


def chunk_text(text: str) -> list[str]:
    """`text` as one document, or, over CHUNK_ABOVE_BYTES, as documents of about CHUNK_BYTES.

    Real corpora come as a few big files too (tinyshakespeare is one 1.1 MB file); as single
    documents they could not be split at all. Pieces (see `_pieces`) are packed in order: a
    document is closed before the piece that would take it past CHUNK_BYTES once it holds
    CHUNK_BYTES/2, and a short tail joins the document before it. So every document has at
    least CHUNK_BYTES/2 and at most 3*CHUNK_BYTES bytes (mostly at most CHUNK_BYTES), and the
    documents concatenate to exactly `text`."""
    if len(text) * 4 <= CHUNK_ABOVE_BYTES or nbytes(text) <= CHUNK_ABOVE_BYTES:
        return [text]
    chunks: list[list[str]] = []
    sizes: list[int] = []
    current: list[str] = []
    size = 0
    for piece, n in _pieces(text):
        if current and size >= CHUNK_BYTES // 2 and size + n > CHUNK_BYTES:
            chunks.append(current)
            sizes.append(size)
            current, size = [], 0
        current.append(piece)
        size += n
    if current and chunks and size < CHUNK_BYTES // 2:
        chunks[-1].extend(current)
    elif current:
        chunks.append(current)
    return ["".join(c) for c in chunks]


def documents(source: str, cache_dir: Path | None = None) -> Iterator[tuple[str, str]]:
    """The documents `prepare` splits: those of the source, each over CHUNK_ABOVE_BYTES cut
    into pieces (named NAME#chunkI), so a corpus of a few big files still spreads over the splits."""
    for name, text in iter_documents(source, cache_dir):
        pieces = chunk_text(text)
        if len(pieces) == 1:
            yield name, text
        else:
            for i, piece in enumerate(pieces):
                yield f"{name}#chunk{i}", piece
