"""A partition's chunk blob: the diff writes its lines as bytes, compressed (one Zstandard
frame), and they must be byte for byte the text lines the standard library writes, encoded
(what delivery reads), whatever the values hold (a lone surrogate never gets this far: every
source reader rejects it). A chunk an earlier version wrote as plain text or gzip is still
read."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
import zstandard

from shared.core.fingerprints import data_points
from shared.core.jsonlines import dumpb
from shared.core.resource_names import RUNS_CONTAINER
from shared.pipeline.run_files import (
    DamagedRunFile,
    chunk_blob_name,
    encoded_chunk_line,
    read_chunk,
    write_chunk,
)
from tests.integration.conftest import App

MESSY_OBJECTS: list[dict[str, Any]] = [
    {"external_id": "plain", "email": "a@example.com", "points": 12},
    {"external_id": "c-🎉", "first_name": "Zoë 李 🎉", "segments": {"add": ["VIP – 🎉"]}},
    {"external_id": 'q"uote', "note": 'says "hi", twice\nand\ttabs', "bom": "\ufeffstart"},
    {"external_id": "sep", "line_seps": "\u2028\u2029", "blank": None, "flag": True},
    {"external_id": "huge", "bio": "é" * 200_000, "big": 2**70, "tiny": 1e-7},
    {"external_id": "odd numbers", "nan": float("nan"), "inf": float("-inf"), "nested": [{}]},
]


def test_chunk_lines_written_as_bytes_are_the_text_lines_encoded(quiet_app: App) -> None:
    services = quiet_app.services
    lines = [
        encoded_chunk_line(order, data_points(obj), dumpb(obj))
        for order, obj in enumerate(MESSY_OBJECTS, start=40)
    ]
    name = "test-chunk-blobs/part-0000-chunk-0000.tsv"
    write_chunk(services, name, lines)

    text = "".join(
        f"{order}\t{data_points(obj)}\t{_standard_json(obj)}\n"
        for order, obj in enumerate(MESSY_OBJECTS, start=40)
    )
    stored = services.storage.read_bytes(RUNS_CONTAINER, name)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(stored) == text.encode("utf-8")
    assert len(stored) < len(text.encode("utf-8")) // 10  # the huge field repeats one letter
    read = read_chunk(services, [name])
    assert [(order, points) for order, points, _ in read] == [
        (40 + n, data_points(obj)) for n, obj in enumerate(MESSY_OBJECTS)
    ]
    assert [_standard_json(json.loads(obj)) for _, _, obj in read] == [
        _standard_json(obj)
        for obj in MESSY_OBJECTS  # NaN is not equal to itself
    ]


def _standard_json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def test_a_chunk_blob_that_is_not_utf8_is_refused_whole(quiet_app: App) -> None:
    """Delivery joins the objects' bytes into request bodies as they are; a blob damaged in
    storage must not reach Braze in part (a poisoned chunk then reports its rows unlisted)."""
    services = quiet_app.services
    name = "test-chunk-blobs/damaged.tsv"
    whole = encoded_chunk_line(1, 1, dumpb({"external_id": "fine 🎉"}))
    damaged = b'2\t1\t{"external_id":"cut \xf0\x9f"}'  # an emoji's first two bytes
    write_chunk(services, name, [whole, damaged])
    with pytest.raises(UnicodeDecodeError):
        read_chunk(services, [name])


def test_a_chunk_blob_cut_inside_a_character_is_refused(quiet_app: App) -> None:
    """The check's last step: a blob that ends part-way through a character."""
    services = quiet_app.services
    name = "test-chunk-blobs/cut.tsv"
    cut = encoded_chunk_line(1, 1, dumpb({"external_id": "fine 🎉"})) + b"\n2\t1\t\xf0\x9f"
    services.storage.write_bytes(RUNS_CONTAINER, name, cut, "text/tab-separated-values")
    with pytest.raises(UnicodeDecodeError) as refused:
        read_chunk(services, [name])
    assert refused.value.start == len(cut) - 2  # where in the blob, as the report says


def test_characters_cut_by_the_utf8_checks_slices_are_read_whole(quiet_app: App) -> None:
    """The check reads a blob in 64 KiB slices: a four-byte character across a slice's end is
    still valid, and the objects come back byte for byte."""
    services = quiet_app.services
    name = "test-chunk-blobs/wide.tsv"
    wide = {"external_id": "wide 🎉", "value": "ab" + "🎉" * 50_000}
    line = encoded_chunk_line(1, 1, dumpb(wide))
    assert line.index("🎉🎉".encode()) % 4 != 0  # so each slice's end falls inside one
    write_chunk(services, name, [line])
    ((order, points, obj),) = read_chunk(services, [name])
    assert (order, points, obj) == (1, 1, dumpb(wide))


def test_a_chunk_written_as_plain_text_by_an_earlier_version_is_read(quiet_app: App) -> None:
    """A partition diffed before an upgrade and released or delivered after it: the release
    rebuilds the chunk's name, which is the same."""
    services = quiet_app.services
    name = chunk_blob_name("test-chunk-blobs-earlier", 3, 0)  # the name the release rebuilds
    objects = MESSY_OBJECTS[:4]
    lines = [encoded_chunk_line(n, data_points(o), dumpb(o)) for n, o in enumerate(objects)]
    services.storage.write_bytes(
        RUNS_CONTAINER, name, b"\n".join(lines) + b"\n", "text/tab-separated-values"
    )
    assert [obj for _, _, obj in read_chunk(services, [name])] == [dumpb(o) for o in objects]


def test_a_chunk_gzipped_by_an_earlier_version_is_read(quiet_app: App) -> None:
    """The version before wrote each chunk as one gzip member, under the same name."""
    services = quiet_app.services
    name = chunk_blob_name("test-chunk-blobs-gzip", 3, 0)
    objects = MESSY_OBJECTS[:4]
    lines = [encoded_chunk_line(n, data_points(o), dumpb(o)) for n, o in enumerate(objects)]
    packed = gzip.compress(b"\n".join(lines) + b"\n", compresslevel=1)
    services.storage.write_bytes(RUNS_CONTAINER, name, packed, "application/gzip")
    assert [obj for _, _, obj in read_chunk(services, [name])] == [dumpb(o) for o in objects]


def test_a_compressed_chunk_damaged_in_storage_is_refused_whole(quiet_app: App) -> None:
    """A flipped byte fails the frame's checksum (or its decoding) before anything is read out
    of it; cut short, it fails too; the error names the blob."""
    services = quiet_app.services
    objects = [{"external_id": f"c-{n}", "first_name": "Zoë 🎉", "points": n} for n in range(500)]
    lines = [encoded_chunk_line(n, data_points(o), dumpb(o)) for n, o in enumerate(objects)]
    write_chunk(services, "test-chunk-blobs/whole.tsv", lines)
    whole = services.storage.read_bytes(RUNS_CONTAINER, "test-chunk-blobs/whole.tsv")
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0x01
    for name, data in (("flipped", bytes(flipped)), ("cut", whole[: len(whole) - 9])):
        services.storage.write_bytes(
            RUNS_CONTAINER, f"test-chunk-blobs/{name}.tsv", data, "application/zstd"
        )
        with pytest.raises(DamagedRunFile, match=f"chunk blob test-chunk-blobs/{name}.tsv: "):
            read_chunk(services, [f"test-chunk-blobs/{name}.tsv"])
    assert len(read_chunk(services, ["test-chunk-blobs/whole.tsv"])) == 500
