"""A plain CSV or JSON Lines byte range (or a CDM partition file) as raw records: where each
record is and a digest of its bytes, found without parsing.

A delta run's rows are mostly byte for byte the rows of the last run. A record whose bytes
(under a seed that names everything turning bytes into a profile: the code, the mapping, the
format and the columns; for a CDM file, its delimiter and quoting too) are those of a record
the snapshot holds is that profile, unchanged:
the split files it by the snapshot's index (`RecordIndex`) without decoding, parsing,
validating or digesting its values, and only the other records are parsed.

Records are found as `record_starts` finds range boundaries: in RFC 4180 CSV a line break is
inside quotes exactly when the quotes before it on the record are odd in number. A file that
breaks that rule (a lone quote in an unquoted value, which the csv module reads as text) is
caught where its records are parsed (`raw_source`), and its range is read the ordinary way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from hashlib import blake2b
from typing import TYPE_CHECKING

import orjson
from xxhash import xxh3_64_digest

if TYPE_CHECKING:
    import numpy as np


class RawPathUnsafe(Exception):
    """The range cannot be cut into raw records safely (a record over the cap, a quote never
    closed, records the parser reads differently): it is read the ordinary way instead."""


@dataclass(slots=True)
class RawBlock:
    """Whole records of a range, with the blank lines between them: each record's first line
    (1-based, in the file), and its start and end (before its line break) in `data`, as the
    numpy arrays that found them (int64): a delta's split picks the records the index holds
    out of them at once, where lists cost it a conversion back of every record."""

    data: bytes
    offset: int  # of data[0] in the file
    lines: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


def raw_digest_seed(code_version: str, mapping: str, fmt: str, header: list[str] | None) -> int:
    """The seed each record's bytes are digested with: the same bytes under another code,
    mapping, format or header are another profile."""
    basis = orjson.dumps([code_version, mapping, fmt, header])
    return int.from_bytes(blake2b(basis, digest_size=8).digest(), "big")


def digest_records(block: RawBlock, seed: int) -> list[bytes]:
    """Each record's 8-byte digest (XXH3, big-endian), in order: three times as fast as a keyed
    BLAKE2b here, and every record of a split's range is digested."""
    view, digest = memoryview(block.data), xxh3_64_digest
    spans = zip(block.starts.tolist(), block.ends.tolist(), strict=True)
    return [digest(view[start:end], seed) for start, end in spans]


def raw_blocks(
    chunks: Iterable[bytes],
    *,
    offset: int,
    first_line: int,
    quoted: bool,
    json_lines: bool = False,
    limit: int,
) -> Iterator[RawBlock]:
    """The records of a byte range (starting at a record start), a downloaded chunk's worth at
    a time; a record longer than `limit` bytes or a quote never closed raises RawPathUnsafe.

    `quoted`: quotes hold line breaks (CSV, unless a CDM file says QuoteStyle.None);
    `json_lines`: a line of spaces is no record (the csv module reads it as one)."""
    pending, base, line = b"", offset, first_line
    for chunk in _at_most(chunks, BLOCK_BYTES):
        data = pending + chunk if pending else chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            pending = data
            if len(pending) > limit:
                raise RawPathUnsafe(f"a record from line {line} on is over the cap")
            continue
        block, kept, line = _records(data[:cut], base, line, quoted, json_lines, limit)
        pending = data[kept:]
        if len(pending) > limit:
            raise RawPathUnsafe(f"a record from line {line} on is over the cap")
        base += kept
        yield block
    if pending:  # the range ends without a line break
        block, kept, line = _records(pending + b"\n", base, line, quoted, json_lines, limit)
        if kept < len(pending):
            raise RawPathUnsafe(f"the quote opened on line {line} is never closed")
        yield RawBlock(pending, block.offset, block.lines, block.starts, block.ends)


# A download's first piece may be up to 32 MiB (a split's range is usually that one piece: 8 MiB,
# 24 in a delta), later ones 8 MiB (`storage.DOWNLOAD_PIECE_BYTES`); numpy's passes over a block
# hold several times it at once, so pieces are cut into blocks of 4 MiB (a copy of each).
BLOCK_BYTES = 4 << 20


def _at_most(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The chunks, a long one in pieces of `size` bytes."""
    for chunk in chunks:
        if len(chunk) <= size:
            yield chunk
            continue
        view = memoryview(chunk)
        for start in range(0, len(chunk), size):
            yield bytes(view[start : start + size])


def _records(
    data: bytes, base: int, first_line: int, quoted: bool, json_lines: bool, limit: int
) -> tuple[RawBlock, int, int]:
    """The records of `data` (whole lines): the block, how many bytes it holds (a record still
    inside quotes at the end is left out for the next chunk), and the next line's number.

    Found with numpy, a block at a time (a loop over lines cost about 2 µs a record): a line
    break ends a record when the quotes before it in the block are even in number (the block
    starts at a record start); a blank line is no record, nor, in JSON Lines, a line of spaces.
    """
    import numpy as np  # only a split that reads a delta needs it

    octets = np.frombuffer(data, dtype=np.uint8)
    breaks = np.flatnonzero(octets == 10)  # data ends with one
    if quoted:
        quotes = np.flatnonzero(octets == 34)
        closing = np.flatnonzero((np.searchsorted(quotes, breaks) & 1) == 0)
    else:
        closing = np.arange(len(breaks))
    ends = breaks[closing]
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    lines = np.empty_like(closing)
    lines[:1] = 0
    lines[1:] = closing[:-1] + 1
    lengths = ends - starts
    blank = (lengths == 0) | ((lengths == 1) & (octets[starts] == 13))
    if json_lines:  # a line of spaces is no record either (`bytes.strip`'s spaces)
        for at in np.flatnonzero(~blank & np.isin(octets[starts], _SPACES)).tolist():
            blank[at] = not data[int(starts[at]) : int(ends[at])].strip()
    keep = ~blank
    over = keep & (lengths >= limit)
    if over.any():
        line = first_line + int(lines[np.argmax(over)])
        raise RawPathUnsafe(f"the record on line {line} is over the cap")
    block = RawBlock(b"", base, lines[keep] + first_line, starts[keep], ends[keep])
    kept = int(ends[-1]) + 1 if len(ends) else 0
    next_line = first_line + (int(closing[-1]) + 1 if len(closing) else 0)
    if kept < len(data):  # a record goes on past the block's last line break
        if len(data) - kept > limit:
            raise RawPathUnsafe(f"the record on line {next_line} is over the cap")
        block.data = data[:kept]
        return block, kept, next_line
    block.data = data
    return block, len(data), next_line


_SPACES = (9, 11, 12, 13, 32)  # the ASCII spaces `bytes.strip` takes off, but for line feeds
