"""`read_ahead`: a download's pieces come in order with the next one fetched meanwhile; a failed
download reaches the reader, and a reader that stops early stops the fetching."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.adapters.storage import read_ahead


def test_pieces_come_in_order_empty_ones_too() -> None:
    assert list(read_ahead(iter([b"a", b"", b"c\n", b"\x00"]))) == [b"a", b"", b"c\n", b"\x00"]


def test_a_failed_download_reaches_the_reader_after_the_pieces_before_it() -> None:
    def pieces() -> Iterator[bytes]:
        yield b"first"
        raise ConnectionResetError("dropped mid-download")

    reader = read_ahead(pieces())
    assert next(reader) == b"first"
    with pytest.raises(ConnectionResetError, match="dropped mid-download"):
        next(reader)


def test_a_reader_that_stops_early_fetches_at_most_one_piece_more() -> None:
    fetched: list[int] = []

    def pieces() -> Iterator[bytes]:
        for n in range(100):
            fetched.append(n)
            yield b"x"

    reader = read_ahead(pieces())
    assert next(reader) == b"x"
    reader.close()  # waits for the piece on its way, starts no other
    assert fetched == [0, 1]
