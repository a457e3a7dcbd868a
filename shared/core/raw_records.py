"""A plain CSV or JSON Lines byte range as raw records: where each record is and a digest of
its bytes, found without parsing.

A delta run's rows are mostly byte for byte the rows of the last run. A record whose bytes
(under a key that names everything turning bytes into a profile: the code, the mapping, the
format and the header) are those of a record the snapshot holds is that profile, unchanged:
the split files it by the snapshot's index (`RecordIndex`) without decoding, parsing,
validating or digesting its values, and only the other records are parsed.

Records are found as `record_starts` finds range boundaries: in RFC 4180 CSV a line break is
inside quotes exactly when the quotes before it on the record are odd in number. A file that
breaks that rule (a lone quote in an unquoted value, which the csv module reads as text) is
caught where its records are parsed (`records_agree`), and its range is read the ordinary way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from hashlib import blake2b

import orjson


class RawPathUnsafe(Exception):
    """The range cannot be cut into raw records safely (a record over the cap, a quote never
    closed, records the parser reads differently): it is read the ordinary way instead."""


@dataclass(slots=True)
class RawBlock:
    """Whole records of a range, with the blank lines between them: each record's first line
    (1-based, in the file), and its start and end (before its line break) in `data`."""

    data: bytes
    offset: int  # of data[0] in the file
    lines: list[int]
    starts: list[int]
    ends: list[int]


def raw_digester(code_version: str, mapping: str, fmt: str, header: list[str] | None) -> blake2b:
    """The keyed hash each record's bytes are digested with: the same bytes under another code,
    mapping, format or header are another profile."""
    basis = orjson.dumps([code_version, mapping, fmt, header])
    return blake2b(digest_size=8, key=blake2b(basis, digest_size=32).digest())


def digest_records(block: RawBlock, keyed: blake2b) -> list[bytes]:
    """Each record's 8-byte digest, in order."""
    view, copy, digests = memoryview(block.data), keyed.copy, []
    for start, end in zip(block.starts, block.ends, strict=True):
        hasher = copy()
        hasher.update(view[start:end])
        digests.append(hasher.digest())
    return digests


def raw_blocks(
    chunks: Iterable[bytes], *, offset: int, first_line: int, quoted: bool, limit: int
) -> Iterator[RawBlock]:
    """The records of a byte range (starting at a record start), a downloaded chunk's worth at
    a time; a record longer than `limit` bytes or a quote never closed raises RawPathUnsafe."""
    pending, base, line = b"", offset, first_line
    for chunk in chunks:
        data = pending + chunk if pending else chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            pending = data
            if len(pending) > limit:
                raise RawPathUnsafe(f"a record from line {line} on is over the cap")
            continue
        block, kept, line = _records(data[:cut], base, line, quoted, limit)
        pending = data[kept:]
        if len(pending) > limit:
            raise RawPathUnsafe(f"a record from line {line} on is over the cap")
        base += kept
        yield block
    if pending:  # the range ends without a line break
        block, kept, line = _records(pending + b"\n", base, line, quoted, limit)
        if kept < len(pending):
            raise RawPathUnsafe(f"the quote opened on line {line} is never closed")
        yield RawBlock(pending, block.offset, block.lines, block.starts, block.ends)


def _records(
    data: bytes, base: int, first_line: int, quoted: bool, limit: int
) -> tuple[RawBlock, int, int]:
    """The records of `data` (whole lines): the block, how many bytes it holds (a record still
    inside quotes at the end is left out for the next chunk), and the next line's number."""
    lines: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    position, number = 0, first_line
    open_at = open_line = -1  # where a record that goes on past its first line began
    for text in data.split(b"\n")[:-1]:
        end = position + len(text)
        if open_at >= 0:
            if b'"' in text and text.count(b'"') & 1:
                if end - open_at >= limit:
                    raise RawPathUnsafe(f"the record on line {open_line} is over the cap")
                starts.append(open_at)
                ends.append(end)
                lines.append(open_line)
                open_at = -1
        elif quoted and b'"' in text and text.count(b'"') & 1:
            open_at, open_line = position, number
        elif text and text != b"\r" and (quoted or text.strip()):
            if len(text) >= limit:
                raise RawPathUnsafe(f"the record on line {number} is over the cap")
            starts.append(position)
            ends.append(end)
            lines.append(number)
        position, number = end + 1, number + 1
    if open_at >= 0:
        if position - open_at > limit:
            raise RawPathUnsafe(f"the record on line {open_line} is over the cap")
        return RawBlock(data[:open_at], base, lines, starts, ends), open_at, open_line
    return RawBlock(data, base, lines, starts, ends), len(data), number
