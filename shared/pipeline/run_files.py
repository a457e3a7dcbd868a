"""A run's working files in the runs container: where each lives, and the formats of the
partition pieces and the delivery chunks. One place, so every stage agrees.
"""

from __future__ import annotations

import codecs
import functools
import itertools
import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import orjson

from shared.adapters.services import Services
from shared.adapters.storage import Storage
from shared.core import jsonlines
from shared.core.fingerprints import data_points, row_digest
from shared.core.jsonlines import has_non_finite
from shared.core.resource_names import RUNS_CONTAINER
from shared.core.runs import Run, SplitPieces
from shared.core.source_files import open_lines
from shared.core.zstd_frames import MAGIC as _ZSTD_MAGIC
from shared.core.zstd_frames import FrameError, compressor, frame_content, frames_content

if TYPE_CHECKING:
    import numpy as np
    import zstandard

# Where each file lives: every name is under the run's prefix.


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}/"


def rejected_prefix(run_id: str) -> str:
    return f"{run_prefix(run_id)}rejected/"


def source_files_blob_name(run_id: str) -> str:
    """The CDM partition files of a run, in order (row positions index into it)."""
    return f"{run_prefix(run_id)}partitions.json"


def splits_blob_name(run_id: str) -> str:
    """The split jobs of a run cut into byte ranges, and the CSV header the later ones lack."""
    return f"{run_prefix(run_id)}splits.json"


def split_pieces_name(run_id: str, split: int, attempt: str) -> str:
    """One split's pieces, one per hash partition in partition order (`PieceLines.line` rows,
    tab-separated, each piece's rows compressed on its own: `unpacked`), where its record
    (`SplitResult.piece_ends`) says each ends; a partition is its pieces in split order, which
    is source order. Each attempt of a split writes its own blob and the recorded one is read,
    so an attempt that lost the race (and may have read other bytes, if the source was written
    meanwhile) cannot change what the offsets point at.
    """
    return f"{run_prefix(run_id)}partitions/s{split:04d}-{attempt}.bin"


def partition_piece_name(run_id: str, partition: int, split: int) -> str:
    """A piece as a blob of its own, as the version before `split_pieces_name` wrote them."""
    return f"{run_prefix(run_id)}partitions/p{partition:04d}-s{split:04d}.jsonl"


def partition_pieces(
    services: Services, run: Run, partitions: Sequence[int]
) -> dict[int, list[bytes]]:
    """Each of `partitions`' pieces (ascending, as a job's are), in split order: from each
    split's blob, the one range that holds them all (`_cut_range`), read at once with the
    other splits'; a split by the version before has a blob for every piece, each read."""
    if not partitions or list(partitions) != sorted(set(partitions)):
        raise ValueError(f"partitions to read must be some, ascending: {list(partitions)}")
    storage = services.storage
    splits = services.runs.split_pieces(run.run_id)
    if len(splits) != run.splits:
        raise RuntimeError(
            f"run {run.run_id} has {len(splits)} split records for its {run.splits} splits"
        )
    shares: list[Callable[[], list[tuple[int, bytes]]]] = []
    for split in splits:
        if split.pieces_blob:
            shares.append(functools.partial(_cut_range, storage, split, partitions))
            continue
        for partition in partitions:  # split by the version before: a blob per piece
            name = partition_piece_name(run.run_id, partition, split.split)
            shares.append(functools.partial(_whole_piece, storage, name, partition))
    pieces: dict[int, list[bytes]] = {partition: [] for partition in partitions}
    for share in storage.in_parallel(shares):  # in split order
        for partition, piece in share:
            pieces[partition].append(piece)
    return pieces


def _cut_range(
    storage: Storage, split: SplitPieces, partitions: Sequence[int]
) -> list[tuple[int, bytes]]:
    """One split's pieces of `partitions`, cut from one range read of its blob, the range let go
    once cut; a piece it filed no row in is left out (nothing is read when all are empty)."""
    first, last = partitions[0], partitions[-1]
    start = at = split.piece_ends[first - 1] if first else 0
    if split.piece_ends[last] == start:
        return []
    length = split.piece_ends[last] - start
    data = storage.read_bytes(RUNS_CONTAINER, split.pieces_blob, start, length)
    if len(data) != length:
        raise DamagedRunFile(
            f"pieces blob {split.pieces_blob}: {len(data)} bytes where its split's record "
            f"says {length} from byte {start}"
        )
    wanted, cut = set(partitions), []
    for partition in range(first, last + 1):
        end = split.piece_ends[partition]
        if partition in wanted and end > at:
            try:
                cut.append((partition, unpacked(data[at - start : end - start])))
            except DamagedRunFile as error:
                raise DamagedRunFile(
                    f"pieces blob {split.pieces_blob}, partition {partition}'s piece: {error}"
                ) from None
        at = end
    return cut


def _whole_piece(storage: Storage, name: str, partition: int) -> list[tuple[int, bytes]]:
    return [(partition, storage.read_bytes(RUNS_CONTAINER, name))]


def plan_rejected_name(run_id: str, split: int, attempt: str) -> str:
    """Rows one attempt of a split rejected, in source order; the split's record names the
    attempt's (as `split_pieces_name`)."""
    return f"{rejected_prefix(run_id)}plan-{split:04d}-{attempt}.jsonl"


def carried_rejected_name(run_id: str) -> str:
    """A run that found its source unchanged: the rejected rows of the run it names, copied."""
    return f"{rejected_prefix(run_id)}carried.jsonl"


def legacy_pending_snapshot_name(run_id: str, partition: int) -> str:
    """What a diff of the version before row digests wrote instead of fallbacks (a run diffed
    before an upgrade and finalized after it): `[id, prints]` or `[id, new, old]` per line."""
    return f"{run_prefix(run_id)}snapshot/p{partition:04d}.jsonl"


def snapshot_fallbacks_name(run_id: str, partition: int) -> str:
    """Per profile a partition's diff sent, the snapshot line it had before (null prints: none),
    in frames (`packed_frame`; an earlier version wrote the lines as they are: `unpacked_stream`
    reads both)."""
    return f"{run_prefix(run_id)}snapshot/p{partition:04d}.tsv"


def diffed_snapshot_name(run_id: str, partition: int) -> str:
    """A snapshot partition as its diff wrote it, kept when finalizing first rewrites it (in
    the snapshot's format: an earlier version kept it as text, which is read too)."""
    return f"{run_prefix(run_id)}snapshot/p{partition:04d}-diffed.tsv"


def partition_rejected_name(run_id: str, partition: int) -> str:
    return f"{rejected_prefix(run_id)}partition-{partition:04d}.jsonl"


def chunk_blob_name(run_id: str, partition: int, index: int) -> str:
    """What to send: `order <TAB> data points <TAB> object` per line, compressed
    (`write_chunk`). Still named `.tsv`: the release rebuilds the names, and a partition diffed
    by an earlier version wrote its chunk as plain text or gzip under this one
    (`unpacked_chunk` reads each)."""
    return f"{run_prefix(run_id)}chunks/p{partition:04d}-{index:04d}.tsv"


def replay_chunk_prefix(run_id: str, round_: int) -> str:
    """The chunks of a run's n-th replay round (they mix partitions)."""
    return f"{run_prefix(run_id)}chunks/r{round_:02d}-"


def replay_chunk_name(run_id: str, round_: int, index: int) -> str:
    return f"{replay_chunk_prefix(run_id, round_)}{index:04d}.tsv"


def dry_run_blob_name(run_id: str) -> str:
    return f"{run_prefix(run_id)}dry-run/requests.jsonl"


def report_blob_name(run_id: str) -> str:
    return f"{run_prefix(run_id)}report.json"


def summary_blob_name(run_id: str) -> str:
    """The report as a short Markdown summary for people (core/report_markdown.py)."""
    return f"{run_prefix(run_id)}report.md"


def rejected_blob_name(run_id: str) -> str:
    return f"{run_prefix(run_id)}rejected.jsonl"


# Partition pieces: one split job's rows of one partition, as the diff reads them.
#
# One line per row whose customer id is usable, its fields separated by tabs (JSON escapes
# every tab and newline inside a value): `order, customer id as JSON, row digest, the row's
# mapped values as JSON (`mapped_values`), raw digest`. The split only reads rows and files
# them; the diff validates a row only when its digest differs from the one the snapshot
# remembers for its customer id, so an unchanged profile of a delta run is never validated,
# converted or fingerprinted again.
#
# A row whose bytes are those of a row the snapshot holds (`raw_records`) is not even parsed:
# it is a fixed-size binary record after the text, behind a NUL byte (which no text line holds:
# JSON escapes it): its order, where its bytes are in the source file (to read it again if the
# diff cannot take it as it is) and its raw digest. The diff takes these records in bulk.
# (A piece written before that has the line `order, raw digest, offset:length` instead.)
MATCHED_MARK = b"\x00"
# Stored, the records are a frame of their own behind this mark instead (`unpacked` gives them
# back behind MATCHED_MARK): 32 bytes a record shrink to about 13, for 2.6 ms of CPU a MB.
PACKED_MATCHED_MARK = b"\x01"

# A piece row: (order, customer id as JSON, row digest, the row's mapped values as JSON, raw
# digest);
# for a row filed by its raw digest: (order, "", "", "offset:length", raw digest).
PieceRow = tuple[int, str, str, str, str]


def matched_record_type() -> np.dtype:
    """A matched record: order, offset and length in the source file, raw digest."""
    import numpy as np

    return np.dtype([("order", "<i8"), ("offset", "<i8"), ("length", "<i8"), ("raw", ">u8")])


def piece_sections(piece: bytes) -> tuple[str, bytes]:
    """A piece's text rows, and the bytes of its matched records (`matched_records`)."""
    mark = piece.find(MATCHED_MARK)
    if mark < 0:
        return piece.decode(), b""
    return piece[:mark].decode(), piece[mark + 1 :]


def matched_records(data: bytes) -> np.ndarray:
    """Matched records (`matched_record_type`) from their bytes."""
    import numpy as np

    return np.frombuffer(data, matched_record_type())


def matched_rows(records: np.ndarray) -> list[PieceRow]:
    """Matched records as piece rows (for the diff's row by row path)."""
    return [
        (order, "", "", f"{offset}:{length}", f"{raw:016x}")
        for order, offset, length, raw in records.tolist()
    ]


def mapped_values(values: dict[str, Any], columns: frozenset[str]) -> dict[str, Any]:
    """A row's values in the `columns` the export reads (those it has), in the row's order: a
    piece carries no other column (a Customer Insights profile has many more than an export
    maps), so planning moves and keeps only what it needs, and a rejected row is reported with
    the mapped columns (its `line` and `file` find the rest). A mapped column the row lacks
    keeps the keys that differ from it only in case: the rejected row then shows why its
    `email` is missing (it has `Email`; keys are case-sensitive)."""
    if columns.issuperset(values):
        return values
    kept = {column: value for column, value in values.items() if column in columns}
    if len(kept) < len(columns):  # a JSON Lines row without a mapped key: keep its lookalikes
        missing = {column.casefold() for column in columns if column not in kept}
        kept = {
            column: value
            for column, value in values.items()
            if column in kept or column.casefold() in missing
        }
    return kept


@dataclass(frozen=True, slots=True)
class PieceLines:
    """How a run's rows are written into its pieces (`line`): their digests seeded by `seed`
    (`row_digest_seed`: the code that planned the run and its mapping). With `sort_keys`
    (JSON Lines, whose writers may order a record's keys differently from run to run; a CSV's
    columns keep the header's order) the digest is of the values with their keys sorted, so
    the same values keep it, while the piece keeps the record's order (a rejected row is
    reported as read). Made once per split job (`run_source.piece_lines`)."""

    seed: int
    sort_keys: bool = False

    def line(self, order: int, customer_id: str, values: dict[str, Any], raw: str = "") -> bytes:
        """One row of a piece, as the bytes the split writes, with the row digest of its
        values' bytes (`row_digest`): JSON bytes go straight into the line, never decoded and
        encoded again. This runs for every row of a segment, so orjson is called here directly
        (two calls of `jsonlines.dumpb` cost half a microsecond more per row); a row orjson
        cannot write exactly (NaN, which it writes as null) takes `jsonlines.dumpb`."""
        try:
            id_json, values_json = orjson.dumps(customer_id), orjson.dumps(values)
            exact = values_json.find(b"null") < 0 or not has_non_finite(values)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            exact = False
        if not exact:
            id_json, values_json = jsonlines.dumpb(customer_id), jsonlines.dumpb(values)
        hashed = jsonlines.dumpb(values, sort_keys=True) if self.sort_keys else values_json
        digest = row_digest(hashed, self.seed).encode()
        return b"%d\t%b\t%b\t%b\t%b\n" % (order, id_json, digest, values_json, raw.encode())


def read_rows(text: str) -> Iterator[PieceRow]:
    """The rows of one piece's text, in the order the split wrote them."""
    for line in text.split("\n"):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) == 5:
            order, id_json, digest, values_json, raw = fields
            yield int(order), id_json, digest, values_json, raw
        elif len(fields) == 3:
            order, raw, where = fields
            yield int(order), "", "", where, raw
        elif len(fields) == 4:  # written before raw digests
            order, id_json, digest, values_json = fields
            yield int(order), id_json, digest, values_json, ""
        else:
            raise ValueError(
                "this partition piece was written by an unknown version of the app; start the "
                "run again"
            )


def rejection_line(
    position: dict[str, Any], customer_id: object, problems: list[tuple[str, str]], values: Any
) -> str:
    """A row rejected by validation, as the rejected rows list it: where it is, every reason,
    and `values`: its mapped columns as read (`mapped_values`), or, for a row that could not be
    read into columns, what could be read of it."""
    entry = {
        **position,
        "customer_id": customer_id,
        "stage": "validation",
        "codes": [code for code, _ in problems],
        "reasons": [message for _, message in problems],
        "row": values,
    }
    return rejected_entry_text(entry)


def rejected_entry_text(entry: dict[str, Any]) -> str:
    """An entry of the rejected rows as one line of compact JSON: orjson's where it writes what
    the standard library reads back (`jsonlines.dumps`; the standard library's encoder took
    several times as long, paid by every rejected row of every run), else the standard
    library's, with what is not JSON written as text."""
    try:
        return jsonlines.dumps(entry)
    except TypeError:
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"), default=str)


# Delivery chunks: `order <TAB> data points <TAB> object` per profile, cut into fixed batches.


def chunk_line(order: int, obj: dict[str, Any]) -> bytes:
    """One profile of a chunk blob: `order <TAB> data points <TAB> object`."""
    return encoded_chunk_line(order, data_points(obj), jsonlines.dumpb(obj))


def encoded_chunk_line(order: int, points: int, obj_json: bytes) -> bytes:
    """A chunk line from what is already counted and encoded (`jsonlines.dumpb`: compact JSON,
    UTF-8 kept as is, which Braze accepts and which is smaller than \\u escapes).

    Bytes, not text: a partition's lines joined as text take four bytes a character as soon
    as one line holds a character past U+FFFF (an emoji), and are copied again to be encoded;
    that cost 20 ms a partition of 31,000 new profiles, against 1 ms for joining bytes."""
    return b"%d\t%d\t%s" % (order, points, obj_json)


# Chunks and pieces are Zstandard frames (`core.zstd_frames`: level 1, checksummed): a chunk
# is one frame (`zstd -dc` opens it); a piece is its text rows as one, then, in a delta, its
# matched records as another behind PACKED_MATCHED_MARK, and a split's pieces follow each other
# in its blob. Measured here on the benchmark's pieces (2026-12-07): 1.8 ms of CPU a MB to
# compress and 0.7 to decompress, against 5.8 and 2.1 for gzip at level 1, and 4.9 times
# smaller against 3.7. Every byte of them is written, stored and read again.
_GZIP_MAGIC = b"\x1f\x8b"  # as the version before wrote them
_GZIP_WBITS = 16 + zlib.MAX_WBITS


class DamagedRunFile(ValueError):
    """A chunk or piece whose bytes are cut short or altered in storage."""


def packer() -> zstandard.ZstdCompressionObj:
    """A compressor of one frame (a compressor is not shared: diffs write chunks in threads)."""
    return compressor().compressobj()


def packed_frame(data: bytes) -> bytes:
    """A block of a file written line by line (the fallbacks) as a frame of its own: a first
    export's fallbacks are a line per profile, 23 MB of a 1M run's, written and stored for
    the few profiles Braze may reject."""
    return compressor().compress(data)


def unpacked_stream(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """A file written in frames (`packed_frame`) from a download's pieces, each frame's content
    once its checksum passed (`frames_content`); one that starts with no frame (an earlier
    version's lines) as it is. DamagedRunFile for a frame damaged or cut, or bytes after one
    that start none."""
    chunks = iter(chunks)
    first = b""
    while len(first) < len(_ZSTD_MAGIC) and (piece := next(chunks, None)) is not None:
        first += piece
    if not first.startswith(_ZSTD_MAGIC):
        yield first
        yield from chunks
        return
    try:
        yield from frames_content(itertools.chain([first], chunks))
    except FrameError as error:
        raise DamagedRunFile(f"its compressed bytes are {error}") from None


def unpacked(data: bytes) -> bytes:
    """A piece's bytes as the diff takes them: the content of its text frame (a gzip member, as
    the version before wrote them), then its matched records behind MATCHED_MARK, from the
    frame they are stored in (`PACKED_MATCHED_MARK`) or as they are (as two versions before
    wrote them). Bytes with no frame (an earlier version's) are read as they are. A damaged
    frame fails its checksum or its decoding, a cut one its end, and anything else after the
    text frame is damage too: DamagedRunFile."""
    if not _framed(data):
        if data[:1] != PACKED_MATCHED_MARK:
            return data
        text, rest = b"", data
    else:
        text, rest = _frame_content(data)
    if not rest:
        return text
    if rest[:1] == MATCHED_MARK:
        records = rest[1:]
    elif rest[:1] == PACKED_MATCHED_MARK:
        records, after = _frame_content(rest[1:])
        if after:
            raise DamagedRunFile("bytes follow its matched records")
    else:
        raise DamagedRunFile("bytes follow its text that are no matched records")
    if len(records) % matched_record_type().itemsize:
        raise DamagedRunFile(f"its matched records come to {len(records)} bytes")
    return text + MATCHED_MARK + records


def unpacked_chunk(data: bytes) -> bytes:
    """A chunk's lines as written: its frame's content (a gzip member, as the version before
    wrote them), or the bytes as they are (an earlier version's). DamagedRunFile for a frame
    damaged, cut, or followed by anything."""
    if not _framed(data):
        return data
    text, rest = _frame_content(data)
    if rest:
        raise DamagedRunFile(f"{len(rest)} bytes follow its frame")
    return text


def _framed(data: bytes) -> bool:
    return data[:4] == _ZSTD_MAGIC or data[:2] == _GZIP_MAGIC


def _frame_content(data: bytes) -> tuple[bytes, bytes]:
    """What the frame (or gzip member) at the start of `data` holds, and the bytes after it."""
    if data[:4] == _ZSTD_MAGIC:
        try:
            return frame_content(data)
        except FrameError as error:
            raise DamagedRunFile(f"its compressed bytes are {error}") from None
    if data[:2] != _GZIP_MAGIC:
        raise DamagedRunFile("its compressed bytes do not start as a frame does")
    unpacker = zlib.decompressobj(wbits=_GZIP_WBITS)
    try:
        content = unpacker.decompress(data)
    except zlib.error as error:
        raise DamagedRunFile(f"its compressed bytes are damaged ({error})") from None
    if not unpacker.eof:
        raise DamagedRunFile("its compressed bytes are cut short")
    return content, unpacker.unused_data


def write_chunk(services: Services, blob_name: str, lines: list[bytes]) -> None:
    """Compressed (`packer`): every byte of a chunk is written, stored and read again by
    delivery, and Azurite spends about 21 ms of CPU a MB written here and 3-7 a MB read
    (bench/HISTORY.md, 2026-12-07 17:42), against about 0.5 ms a MB to compress and 0.2 to
    decompress a chunk of the benchmark's profiles (an ad-hoc script, 2026-12-07; real ones,
    with names and addresses that vary more, compress less)."""
    frame = packer()
    packed = frame.compress(b"\n".join(lines)) + frame.compress(b"\n") + frame.flush()
    services.storage.write_bytes(RUNS_CONTAINER, blob_name, packed, "application/zstd")


def read_chunk(services: Services, blob_names: list[str]) -> list[tuple[int, int, bytes]]:
    """(row order, data points, serialized object) per profile of a chunk's blobs, in row order
    (leavers last), read whole: a chunk is a few MiB, and delivery holds its profiles anyway.

    Each blob is in row order; the blobs of several partitions are merged into it, so the rows
    Braze rejects are listed in source order, and every attempt cuts the same batches.

    The objects stay the UTF-8 bytes the diff wrote, which a request body joins as they are
    (checked to be UTF-8 first, `_check_utf8`): decoded to text, split and encoded again, a
    partition's chunk of the benchmark's profiles (accents and emoji included) cost delivery
    2.4-5.3 µs a profile against 1.4-2.5 (eight rounds of each in turn, a busy hour).
    """
    items = []
    blobs = services.storage.read_many(RUNS_CONTAINER, blob_names)
    for name, data in zip(blob_names, blobs, strict=True):
        try:
            data = unpacked_chunk(data)
        except DamagedRunFile as error:
            raise DamagedRunFile(f"chunk blob {name}: {error}") from None
        _check_utf8(data)
        for line in data.split(b"\n"):
            order, points, obj = line.split(b"\t", 2) if line.strip() else (b"", b"", b"")
            if obj:
                items.append((int(order), int(points), obj))
    if len(blob_names) > 1:
        items.sort(key=itemgetter(0))
    return items


_UTF8_SLICE = 1 << 16


def _check_utf8(data: bytes) -> None:
    """Raise UnicodeDecodeError unless a chunk blob is UTF-8: one damaged in storage is refused
    whole, nothing of it sent, and a poisoned chunk's rows are reported as unlisted. Checked in
    slices, the text let go as it is made: decoded whole, a chunk whose profiles each hold an
    emoji makes a string of four bytes a character (27 MB for 6.8 MB), which cost 1.0 µs a
    profile against 0.2."""
    if data.isascii():
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    try:
        for start in range(0, len(data), _UTF8_SLICE):
            decoder.decode(view[start : start + _UTF8_SLICE])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        data.decode()  # the same error with its position in the blob, for the report
        raise


def batches(items: list[Any], size: int) -> list[list[Any]]:
    """Fixed batches of at most `size`: the same chunk always yields the same batches."""
    return [items[start : start + size] for start in range(0, len(items), size)]


# Reading the other working files back.


def json_lines(services: Services, name: str) -> Iterator[Any]:
    """Each JSON line of a blob in the runs container, streamed."""
    for text in open_lines(services.storage.read_chunks(RUNS_CONTAINER, name)):
        if text.strip():
            yield jsonlines.loads(text)


def partition_files_loader(services: Services, run_id: str) -> Callable[[], list[str]]:
    """The CDM partition files of the run's source, in the order row positions use: read once,
    and only if a rejected row needs them."""

    def load() -> list[str]:
        blob = source_files_blob_name(run_id)
        files: list[str] = json.loads(services.storage.read_bytes(RUNS_CONTAINER, blob))
        return files

    return functools.cache(load)
