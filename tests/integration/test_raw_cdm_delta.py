"""Delta runs of a Customer Insights CDM folder, in process on Azurite and the sandbox: each
partition file is a split job or more (a large one is cut into byte ranges), and the rows whose
bytes the snapshot holds are filed by their raw digest without being parsed, read with the CSV
settings the model gives the file (header row or none, delimiter, quoting). Every outcome is
the one reading every row gives."""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
import random
from typing import Any

import pytest
import zstandard

from shared.core.runs import Run, Status
from shared.pipeline import diff_partition, run_source, split_source
from shared.pipeline.raw_source import RawRange
from shared.pipeline.run_files import (
    PACKED_MATCHED_MARK,
    matched_records,
    piece_sections,
    unpacked,
)
from tests.integration.conftest import (
    SPLIT_MIB,
    App,
    export_definition,
    run_counts,
    run_in_process,
)

COLUMNS = ["CustomerId", "PrimaryEmail", "FirstName", "Note"]
NOTES = ['says "hi", twice', "multi\nline, with comma", "Zoë 李 🎉", "\ufeffbom inside", ""]
MAPPING = {
    "customer_id": "CustomerId",
    "email": "PrimaryEmail",
    "attributes": [
        {"column": "FirstName", "attribute": "first_name"},
        {"column": "Note", "attribute": "note"},
    ],
}
PLAIN = {"quoting": True, "delimiter": ",", "headers": False}


def _row(file: int, n: int, **changes: str) -> dict[str, str]:
    row = {
        "CustomerId": f"cdm-{file}-{n:04d}",
        "PrimaryEmail": f"u{file}.{n}@example.com",
        "FirstName": ["Zoë", "O'Brien", "José, Jr.", 'Ann "the" Great'][n % 4],
        "Note": NOTES[n % len(NOTES)],
    }
    return {**row, **changes}


def _unquotable(row: dict[str, str], delimiter: str = ";") -> dict[str, str]:
    """The row as a QuoteStyle.None file can hold it: no quoting, so no line breaks and no
    delimiters in values (quotes are text)."""
    return {k: v.replace("\n", " ").replace(delimiter, ".") for k, v in row.items()}


def _partition(rows: list[dict[str, str]], style: dict[str, Any], *, bom: bool = False) -> bytes:
    records = [COLUMNS] * style["headers"] + [[row[c] for c in COLUMNS] for row in rows]
    text = io.StringIO()
    if style["quoting"]:
        writer = csv.writer(text, delimiter=style["delimiter"], lineterminator="\r\n")
        writer.writerows(records)
    else:  # QuoteStyle.None: values as they are (`_unquotable`)
        text.writelines(style["delimiter"].join(record) + "\r\n" for record in records)
    return (("\ufeff" if bom else "") + text.getvalue()).encode()


class Folder:
    """A CDM folder in the segments container: model.json and its partition files."""

    def __init__(self, app: App, folder: str, styles: list[dict[str, Any]]) -> None:
        self.app, self.folder, self.styles = app, folder, styles
        self.files = [self.name(i) for i in range(len(styles))]

    def name(self, index: int) -> str:
        gz = ".gz" if self.styles[index].get("gzip") else ""
        return f"{self.folder}/Seg/part-{index}.csv{gz}"

    def write(self, parts: list[list[dict[str, str]]], *, extra: dict[int, bytes] | None = None):
        base = self.app.services.storage.container("segments").url
        for index, (rows, style) in enumerate(zip(parts, self.styles, strict=True)):
            data = _partition(rows, style, bom=index == 0) + (extra or {}).get(index, b"")
            self.app.upload(self.name(index), gzip.compress(data) if style.get("gzip") else data)
        partitions = []
        for index, style in enumerate(self.styles):
            settings = {
                "$type": "CsvFormatSettings",
                "columnHeaders": style["headers"],
                "delimiter": style["delimiter"],
                "quoteStyle": "QuoteStyle.Csv" if style["quoting"] else "QuoteStyle.None",
            }
            location = f"{base}/{self.name(index)}"
            partitions.append(
                {"name": f"part-{index}", "location": location, "fileFormatSettings": settings}
            )
        attributes = [{"name": c, "dataType": "string"} for c in COLUMNS]
        entity = {
            "$type": "LocalEntity",
            "name": "Seg",
            "attributes": attributes,
            "partitions": partitions,
        }
        model = {"name": "Export", "version": "1.0", "entities": [entity]}
        self.app.upload(f"{self.folder}/model.json", json.dumps(model).encode())

    def position(self, index: int, line: int) -> tuple[str, int]:
        return f"segments/{self.name(index)}", line


def _define(app: App, *names: str, folder: str) -> None:
    app.define(
        [
            export_definition(name, f"{folder}/model.json", "CDM raw", mapping=MAPPING)
            for name in names
        ]
    )


def _sent(app: App) -> dict[str, dict[str, Any]]:
    return {o["external_id"]: o for b in app.sandbox_requests() for o in b["attributes"]}


def _filed_by_bytes(app: App, run: Run) -> list[int]:
    """Rows filed by their raw digest (matched records), per split job (partition file);
    stored, the records of a piece are a frame of their own behind the text rows' frame."""
    filed = []
    for split in app.services.runs.split_results(run.run_id):
        pieces = app.services.storage.read_bytes("export-runs", split.pieces_blob)
        starts = [0, *split.piece_ends[:-1]]
        count = 0
        for start, end in zip(starts, split.piece_ends, strict=True):
            records = matched_records(piece_sections(unpacked(pieces[start:end]))[1])
            count += len(records)
            text = zstandard.ZstdDecompressor().decompressobj()
            after_text = pieces[start:end]
            if after_text[:4] == b"\x28\xb5\x2f\xfd":
                text.decompress(after_text)
                after_text = text.unused_data
            assert after_text[:5] == (
                PACKED_MATCHED_MARK + b"\x28\xb5\x2f\xfd" if len(records) else b""
            )
        filed.append(count)
    return filed


def _rejected(app: App, run: Run) -> list[tuple[list[str], str, int]]:
    return [(e["codes"], e.get("file"), e.get("line")) for e in app.rejected(run)]


def _line_of(rows: list[dict[str, str]], index: int, *, headers: bool = False) -> int:
    """The line row `index` starts on in its partition file."""
    breaks = sum(value.count("\n") for row in rows[:index] for value in row.values())
    return 1 + int(headers) + index + breaks


def test_a_cdm_delta_files_unchanged_rows_by_their_bytes_in_every_partition_file(
    quiet_app: App,
) -> None:
    """Three header-less files (the CDM default) with quotes, commas, line breaks, accents,
    emoji and a BOM: the delta files every row whose bytes the snapshot holds by its digest,
    whichever file it is in now, and sends, removes and rejects what reading every row would."""
    folder = Folder(quiet_app, "rawcdm/one", [PLAIN, PLAIN, PLAIN])
    _define(quiet_app, "cdm-raw", folder="rawcdm/one")
    parts = [[_row(f, n) for n in range(400)] for f in range(3)]
    parts[0][40]["PrimaryEmail"] = "not an email"  # rejected in both runs
    folder.write(parts)
    first = run_in_process(quiet_app, "cdm-raw")
    assert (first.splits, first.profiles_accepted, first.rows_rejected) == (3, 1_199, 1)
    assert _filed_by_bytes(quiet_app, first) == [0, 0, 0]  # no snapshot yet: every row parsed
    assert _rejected(quiet_app, first) == [
        (["email_invalid"], *folder.position(0, _line_of(parts[0], 40)))
    ]

    changed = [[dict(row) for row in rows] for rows in parts]
    changed[1][7]["FirstName"] = "Zoë-Renamed"
    changed[1][11]["Note"] = 'now "quoted",\nand multi-line'
    leaver = changed[2].pop(100)["CustomerId"]
    changed[2].append(changed[0].pop(5))  # the same bytes, in another file: unchanged
    changed[1].append(_row(7, 1))  # a newcomer
    changed[2].append(dict(changed[0][3]))  # the same bytes again, in a later file: a duplicate
    folder.write(changed)
    quiet_app.mark_sandbox_requests()
    second = run_in_process(quiet_app, "cdm-raw")

    sent = _sent(quiet_app)
    assert set(sent) == {"cdm-1-0007", "cdm-1-0011", "cdm-7-0001", leaver}
    assert sent["cdm-1-0007"] == {"external_id": "cdm-1-0007", "first_name": "Zoë-Renamed"}
    assert quiet_app.braze_users()["cdm-1-0011"]["note"] == 'now "quoted",\nand multi-line'
    assert (second.profiles_new, second.profiles_changed, second.profiles_removed) == (1, 2, 1)
    assert second.profiles_unchanged == 1_199 - 2 - 1
    # Every row the snapshot holds as it is, filed by its bytes: file 0's first row too (its
    # bytes hold the BOM in both runs), the moved row and the duplicate; the rejected row is
    # parsed.
    assert _filed_by_bytes(quiet_app, second) == [398, 400 - 2, 399 + 1 + 1]
    assert _rejected(quiet_app, second) == [
        (["email_invalid"], *folder.position(0, _line_of(changed[0], 39))),
        (["duplicate_customer_id"], *folder.position(2, _line_of(changed[2], 400))),
    ]
    assert second.rows_read == sum(map(len, changed))


def test_every_csv_setting_a_model_gives_reads_as_the_rows_path_reads_it(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two exports of one folder whose files differ in every setting: header rows, delimiters,
    QuoteStyle.None (quotes are text, a line of spaces is a malformed row) and a gzip file. One
    reads its files as raw records, the other as rows (`reads_raw` switched off): both runs of
    each send the same profiles, count the same and reject the same rows, where they are."""
    styles = [
        PLAIN,
        {"quoting": False, "delimiter": ";", "headers": True},
        {"quoting": True, "delimiter": "|", "headers": True},
        {**PLAIN, "gzip": True},
    ]
    folder = Folder(quiet_app, "rawcdm/settings", styles)
    _define(quiet_app, "cdm-raw-path", "cdm-rows-path", folder="rawcdm/settings")
    parts = [[_row(f, n) for n in range(300)] for f in range(4)]
    parts[1] = [_unquotable(dict(row, FirstName='5" screen')) for row in parts[1]]
    spaces = {1: b"   \r\n\r\n"}  # QuoteStyle.None: spaces are a row with one field
    changed = [[dict(row) for row in rows] for rows in parts]
    changed[1][3]["FirstName"] = 'still 5" screen'
    changed[2][4]["Note"] = "a | b, and\nmore"
    changed[3][5]["FirstName"] = "Gzipped"
    changed[0][6]["PrimaryEmail"] = "invalid"
    del changed[2][9]
    changed[1].append(_unquotable(changed[2][0]))  # the same customer in an earlier file
    reads_raw = split_source.reads_raw
    outcomes: dict[str, list[Any]] = {}
    caplog.set_level(logging.INFO, logger=split_source.__name__)
    for name in ("cdm-raw-path", "cdm-rows-path"):
        raw = name == "cdm-raw-path"
        monkeypatch.setattr(split_source, "reads_raw", reads_raw if raw else lambda *a: False)
        outcomes[name] = []
        for version in (parts, changed):
            folder.write(version, extra=spaces)
            quiet_app.mark_sandbox_requests()
            run = run_in_process(quiet_app, name)
            assert run.status == Status.PARTIALLY_SUCCEEDED, run.message  # rows rejected
            counts = run_counts(run)
            outcomes[name].append((_sent(quiet_app), counts, _rejected(quiet_app, run)))
            filed = _filed_by_bytes(quiet_app, run)
        # The raw path's delta filed the unchanged rows of every plain file by their bytes;
        # the gzip file's rows were parsed, as every row of the rows path's runs.
        assert filed == ([299, 299, 298, 0] if raw else [0, 0, 0, 0])

    assert "split 3: read as rows (a compressed file is read as rows)" in caplog.text
    raw_runs, row_runs = outcomes["cdm-raw-path"], outcomes["cdm-rows-path"]
    assert raw_runs == row_runs
    (_, first_counts, first_rejected), (sent, counts, rejected) = raw_runs
    assert first_counts["rows_valid"] == 1_200
    # The malformed row could be anyone's, so cdm-2-0009, gone from its file, is not removed.
    assert set(sent) == {"cdm-1-0003", "cdm-2-0004", "cdm-3-0005"}
    assert counts["profiles_removed"] == 0
    assert sent["cdm-1-0003"]["first_name"] == 'still 5" screen'
    assert sent["cdm-2-0004"]["note"] == "a | b, and\nmore"
    spaces_line = folder.position(1, 1 + 1 + 300)  # after the header row and 300 rows
    assert first_rejected == [(["malformed_row"], *spaces_line)]
    assert rejected == [
        (["email_invalid"], *folder.position(0, _line_of(changed[0], 6))),
        (["malformed_row"], *folder.position(1, 1 + 1 + 301)),
        # The customer's row in file 1 comes first: the one in file 2, after its header row.
        (["duplicate_customer_id"], *folder.position(2, 2)),
    ]
    assert counts["profiles_unchanged"] == 1_200 - 5


@pytest.mark.parametrize(
    ("header", "raw_reason", "message"),
    [
        (
            b"CustomerId;Email;FirstName;Note\r\n",
            "the first record is not the header the plan read",
            "the header row names the columns",
        ),
        (b"", "the range has no header row", "the file is empty"),
    ],
)
def test_a_header_row_the_model_does_not_describe_fails_the_run_as_reading_rows_does(
    quiet_app: App,
    caplog: pytest.LogCaptureFixture,
    header: bytes,
    raw_reason: str,
    message: str,
) -> None:
    """A file the model says has a header row, with another header or none at all: the raw
    path leaves it to the rows path, which fails the run saying so; nothing is sent."""
    caplog.set_level(logging.INFO, logger=split_source.__name__)
    headed = {"quoting": True, "delimiter": ";", "headers": True}
    name = f"cdm-raw-header-{len(header)}"
    folder = Folder(quiet_app, f"rawcdm/{name}", [PLAIN, headed])
    _define(quiet_app, name, folder=f"rawcdm/{name}")
    parts = [[_row(f, n) for n in range(50)] for f in range(2)]
    folder.write(parts)
    assert run_in_process(quiet_app, name).profiles_accepted == 100
    body = _partition(parts[1], headed).split(b"\r\n", 1)[1] if header else b""
    quiet_app.upload(folder.name(1), header + body)
    quiet_app.mark_sandbox_requests()

    failed = run_in_process(quiet_app, name)

    assert f"split 1: read as rows ({raw_reason})" in caplog.text
    assert failed.status == Status.FAILED
    assert message in failed.message and "part-1.csv" in failed.message
    assert _sent(quiet_app) == {}


def test_a_diff_on_other_code_reads_filed_rows_again_from_their_own_file(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment between the split and the diff: every row filed by its bytes is read again,
    from its own partition file at its own offset, and validated by the code that diffs it."""
    headed = {"quoting": True, "delimiter": "\t", "headers": True}
    folder = Folder(quiet_app, "rawcdm/code", [PLAIN, headed, PLAIN])
    _define(quiet_app, "cdm-raw-code", folder="rawcdm/code")
    parts = [[_row(f, n) for n in range(200)] for f in range(3)]
    folder.write(parts)
    run_in_process(quiet_app, "cdm-raw-code")
    parts[2][9]["FirstName"] = "Changed"
    folder.write(parts)
    monkeypatch.setattr(diff_partition, "code_digest", lambda: "another deployment")
    quiet_app.mark_sandbox_requests()

    second = run_in_process(quiet_app, "cdm-raw-code")

    assert _filed_by_bytes(quiet_app, second) == [200, 200, 199]
    assert list(_sent(quiet_app)) == ["cdm-2-0009"]
    assert second.profiles_unchanged == 599 and second.rows_valid == 600


def test_a_partition_files_dialect_seeds_its_digests() -> None:
    """The same bytes read with another delimiter, quoting or columns are another profile: the
    digest seed names them, so a model that changes them matches no snapshot row."""
    run = Run("r", "e", "segment", "c", "segments/f/model.json", "test")
    run.code_version, run.mapping_fingerprint = "code", "mapping"
    base = RawRange("c", "p", 0, None, 1, "csv", COLUMNS, False, True, ",", True, 0, "c/p")
    seeds = {
        base.seed(run),
        RawRange("c", "p", 0, None, 1, "csv", COLUMNS, False, True, ";", True, 0, "c/p").seed(run),
        RawRange("c", "p", 0, None, 1, "csv", COLUMNS, False, True, ",", False, 0, "c/p").seed(run),
        RawRange("c", "p", 0, None, 1, "csv", COLUMNS[::-1], False, True, ",", True, 0, "").seed(
            run
        ),
        RawRange("c", "p", 0, 9, 1, "csv", COLUMNS, False, False).seed(run),  # a plain file
    }
    assert len(seeds) == 5
    # Headers, files and parts do not change what a record's bytes mean.
    assert base.seed(run) == RawRange(
        "x", "y", 0, None, 1, "csv", COLUMNS, True, False, ",", True, 3, "x/y"
    ).seed(run)


def test_large_partition_files_are_cut_into_ranges_read_as_reading_them_whole_reads_them(
    split_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder of one large headed file (`;`, quoted values with line breaks, a BOM), one
    large header-less QuoteStyle.None file and one of about two ranges (the app cuts ranges of
    about 20 KiB here): each is cut at record starts into ranges of about that size, each a
    split job, in a dry run too; a delta's ranges are a few times as large (fewer jobs; the
    third file whole: a folder's files are split jobs already) and file the unchanged rows by
    their bytes. Two exports of the folder, one reading raw records and one rows, send, count
    and reject the same, where the rows are."""
    headed = {"quoting": True, "delimiter": ";", "headers": True}
    unquoted = {"quoting": False, "delimiter": ",", "headers": False}
    folder = Folder(split_app, "rawcdm/ranges", [headed, unquoted, PLAIN])
    _define(split_app, "cdm-ranges-raw", "cdm-ranges-rows", folder="rawcdm/ranges")
    parts = [[_row(0, n) for n in range(1_500)], [], [_row(2, n) for n in range(600)]]
    parts[1] = [_unquotable(dict(_row(1, n), FirstName='5" screen'), ",") for n in range(1_500)]
    parts[0][700]["PrimaryEmail"] = "not an email"
    changed = [[dict(row) for row in rows] for rows in parts]
    changed[0][1_000]["Note"] = 'changed, "quoted"\nand multi-line'
    changed[1][1_200]["FirstName"] = 'still 5" screen'
    del changed[0][300]
    reads_raw = split_source.reads_raw
    outcomes: dict[str, list[Any]] = {}
    for name in ("cdm-ranges-raw", "cdm-ranges-rows"):
        raw = name == "cdm-ranges-raw"
        monkeypatch.setattr(split_source, "reads_raw", reads_raw if raw else lambda *a: False)
        folder.write(parts)
        sizes = [split_app.services.storage.size("segments", file) for file in folder.files]
        dry = run_in_process(split_app, name, dry_run=True)
        first = run_in_process(split_app, name)
        folder.write(changed)
        split_app.mark_sandbox_requests()
        delta = run_in_process(split_app, name)
        range_bytes = int(SPLIT_MIB * 1024 * 1024)
        larger = range_bytes * run_source.INDEXED_RANGE_FACTOR
        assert round(sizes[2] / range_bytes) == 2 and round(sizes[2] / larger) == 1
        ranges = sum(round(size / range_bytes) for size in sizes)
        assert dry.splits == first.splits == ranges >= 3 + 3 + 2, first.message
        assert delta.splits == sum(round(size / larger) for size in sizes) < first.splits
        filed = _filed_by_bytes(split_app, delta)
        assert sum(filed) == (1_499 - 1 - 1 + 1_500 - 1 + 600 if raw else 0)
        outcomes[name] = [
            (run.rows_read, run.rows_valid, run.rows_rejected, _rejected(split_app, run))
            for run in (dry, first, delta)
        ] + [_sent(split_app), (delta.profiles_changed, delta.profiles_removed)]

    assert outcomes["cdm-ranges-raw"] == outcomes["cdm-ranges-rows"]
    runs = outcomes["cdm-ranges-raw"]
    assert runs[1][:3] == (3_600, 3_599, 1)
    assert runs[1][3] == [
        (["email_invalid"], *folder.position(0, _line_of(parts[0], 700, headers=True)))
    ]
    assert runs[2][3] == [
        (["email_invalid"], *folder.position(0, _line_of(changed[0], 699, headers=True)))
    ]
    sent = runs[3]
    assert set(sent) == {"cdm-0-1000", "cdm-1-1200", "cdm-0-0300"}
    assert sent["cdm-0-1000"]["note"] == 'changed, "quoted"\nand multi-line'
    assert runs[4] == (2, 1)


def test_a_folder_of_one_file_is_split_in_parallel_and_its_delta_filed_by_bytes(
    split_app: App,
) -> None:
    """A folder of one partition file, a little over a range: it is cut in ranges like a CSV
    file, and its delta in two at least (one range would be split inline, without the index),
    which file its unchanged rows by their bytes."""
    folder = Folder(split_app, "rawcdm/single", [PLAIN])
    _define(split_app, "cdm-single", folder="rawcdm/single")
    rows = [[_row(0, n) for n in range(400)]]
    folder.write(rows)
    size = split_app.services.storage.size("segments", folder.files[0])
    range_bytes = int(SPLIT_MIB * 1024 * 1024)
    assert range_bytes < size < range_bytes * run_source.INDEXED_RANGE_FACTOR
    first = run_in_process(split_app, "cdm-single")
    rows[0][5]["FirstName"] = "Changed"
    folder.write(rows)
    split_app.mark_sandbox_requests()
    delta = run_in_process(split_app, "cdm-single")

    assert first.splits == math.ceil(size / range_bytes) and first.profiles_accepted == 400
    assert delta.splits == 2 and sum(_filed_by_bytes(split_app, delta)) == 399
    assert list(_sent(split_app)) == ["cdm-0-0005"] and delta.profiles_unchanged == 399


def test_a_gzip_partition_file_without_its_extension_is_read_whole_not_cut(
    split_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """A partition file of gzip bytes named `.csv`, large enough to cut: the plan sees the
    bytes are compressed and leaves the file whole, read by one job as rows."""
    caplog.set_level(logging.INFO, logger=split_source.__name__)
    folder = Folder(split_app, "rawcdm/gzip", [PLAIN, PLAIN])
    _define(split_app, "cdm-gzip-named-csv", folder="rawcdm/gzip")
    parts = [[_row(0, n) for n in range(20)], [_row(1, n) for n in range(2_000)]]
    for n, row in enumerate(parts[1]):
        row["Note"] = random.Random(n).randbytes(24).hex()
    folder.write(parts)
    compressed = gzip.compress(split_app.services.storage.read_bytes("segments", folder.files[1]))
    assert len(compressed) > 2 * SPLIT_MIB * 1024 * 1024
    split_app.upload(folder.files[1], compressed)

    run = run_in_process(split_app, "cdm-gzip-named-csv")

    assert (run.splits, run.profiles_accepted) == (2, 2_020), run.message
    # The split told the bytes too, and read them as rows at once.
    assert "split 1: read as rows (a compressed file is read as rows)" in caplog.text
