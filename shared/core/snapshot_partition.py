"""A snapshot partition: what Braze holds for each profile of one partition, as columns.

A snapshot remembers per profile its customer id, the digest of the values its entry came from
(`fingerprints.row_digest`), the raw digest of its row's bytes (`raw_records`) and a
fingerprint per attribute Braze holds. Written one text line per profile (`snapshot_line`),
that took about 270 bytes a profile, most of them attribute names and hex digits, and a delta's
diff read and wrote every line. Stored as columns it takes about 90: the customer ids as JSON,
one per line, then per profile the row digest, the raw digest and one fingerprint per column
as 64-bit numbers, 0 meaning unknown (a digest) or absent (an attribute). A delta's diff takes
the entries of unchanged profiles with one numpy take, and turns into text (`line`) only the
entries of the profiles it sends.

Each run writes its whole snapshot, and Azurite spends about 21 ms of CPU a MB written here.
So the ids and the numbers are Zstandard frames at level 1, the numbers a column after another:
a column of few values (a country, a flag, the segment's membership) shrinks to almost nothing,
where the digests do not shrink at all. Values like the benchmark's shrink from 88 bytes a
profile to about 43 (an ad-hoc script, 2026-12-07), for about 1 ms of CPU a MB to compress.

Layout (version 2): `MAGIC`, a JSON header line (`profiles`, `columns`, `ids_bytes`,
`version`), the ids (joined by line breaks, JSON escapes any line break inside an id) as one
frame of `ids_bytes` bytes, then the numbers (big-endian, column by column) as another. Version
1 (the ids as they are, then the numbers profile by profile) and partitions written as text by
earlier versions are read too (`from_blob`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from shared.core import jsonlines
from shared.core.record_index import search_sorted

if TYPE_CHECKING:
    import numpy as np

# Not UTF-8: an earlier version, which reads snapshot partitions as text, fails on a partition
# in this format (nothing sent) instead of taking it for an empty one.
MAGIC = b"\xffsnapshot-columns\n"
FORMAT_VERSION = 2
_UNKNOWN = "0" * 16  # a digest or fingerprint not known, as the numbers hold it
_FIXED = 2  # the row digest and the raw digest come before the fingerprints


class SnapshotFormatError(ValueError):
    """A snapshot partition that cannot be read; the message says what is wrong."""


# A profile of a snapshot: (customer id as JSON, row digest, fingerprints, raw digest); either
# digest is empty when unknown.
SnapshotEntry = tuple[str, str, dict[str, str], str]


def snapshot_line(id_json: str, digest: str, prints_json: str, raw: str = "") -> str:
    """An entry as text, as the run's fallbacks keep it: `customer id <TAB> row digest <TAB>
    fingerprints as JSON <TAB> raw digest` (JSON escapes every tab in a value)."""
    return f"{id_json}\t{digest}\t{prints_json}\t{raw}"


def parse_snapshot_line(line: str) -> tuple[str, str, str, str]:
    """(customer id as JSON, row digest, fingerprints as JSON, raw digest) of a text entry, in
    any format an earlier version wrote."""
    if line.startswith("["):  # written before row digests: `[customer id, fingerprints]`
        customer_id, prints = jsonlines.loads(line)
        return jsonlines.dumps(customer_id), "", jsonlines.dumps(prints), ""
    fields = line.split("\t")
    if len(fields) == 3:  # written before raw digests
        return fields[0], fields[1], fields[2], ""
    id_json, digest, prints_json, raw = fields
    return id_json, digest, prints_json, raw


class EntryPacker:
    """Packs entries into rows of numbers, with columns added as attributes appear (an entry
    kept from a snapshot of an earlier mapping may name others).

    Entries are kept as hex digits and turned into numbers all at once (`numbers`): every
    profile of a first export is packed, and a conversion per entry cost about as much as the
    rest of packing it."""

    def __init__(self, columns: Sequence[str] = ()) -> None:
        self.columns = list(dict.fromkeys(columns))
        self._known = set(self.columns)
        self.ids: list[str] = []
        self._digits: list[str] = []  # the entries since a column was last added, their values
        self._blanks = [_UNKNOWN] * len(self.columns)
        self._narrower: list[tuple[int, list[str]]] = []  # earlier entries: (columns, digits)

    def add(self, id_json: str, digest: str, prints: Mapping[str, str], raw: str) -> None:
        """One entry whose digests and fingerprints are 16 hex digits or empty (unknown): the
        app's own (hash digests in hex); text read from storage is checked first
        (`checked_entry`). Anything else makes `numbers` raise."""
        if not self._known.issuperset(prints):
            self._add_columns(prints)
        digits = self._digits
        digits.append(digest or _UNKNOWN)
        digits.append(raw or _UNKNOWN)
        digits.extend(map(prints.get, self.columns, self._blanks))
        self.ids.append(id_json)

    def _add_columns(self, prints: Mapping[str, str]) -> None:
        if self._digits:
            self._narrower.append((len(self.columns), self._digits))
            self._digits = []
        for key in prints:
            if key not in self._known:
                self.columns.append(key)
                self._known.add(key)
        self._blanks = [_UNKNOWN] * len(self.columns)

    def numbers(self, columns: Sequence[str]) -> np.ndarray:
        """The entries packed so far, in `columns` (which start with this packer's)."""
        import numpy as np

        blocks = [
            _in_columns(_hex_rows(digits, _FIXED + count), self.columns[:count], columns)
            for count, digits in [*self._narrower, (len(self.columns), self._digits)]
        ]
        return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]


def _hex_rows(values: list[str], width: int) -> np.ndarray:
    """Values of 16 hex digits each, as rows of `width` numbers; any other value raises
    SnapshotFormatError (naming no customer: it may be logged).

    Joined by spaces, which `bytes.fromhex` skips between two bytes: every value is 16
    characters long when every 17th character is a space and no other is (a longer last value
    adds one), and hex digits only when the bytes come to 8 a value (a space inside a value
    leaves it short; any other character raises)."""
    import numpy as np

    count = len(values)
    try:
        text = " ".join(values)
        packed = bytes.fromhex(text)
    except (TypeError, ValueError):
        text, packed = "", b""
    if count and (text[16::17] != " " * (count - 1) or len(packed) != 8 * count):
        raise SnapshotFormatError("a snapshot entry holds a digest that is not 16 hex digits")
    return np.frombuffer(packed, dtype=">u8").astype(np.uint64).reshape(-1, width)


class SnapshotPartition:
    """One snapshot partition in memory: ids, and a row of numbers per profile."""

    def __init__(self, ids: list[str], numbers: np.ndarray, columns: list[str]) -> None:
        self.ids, self.numbers, self.columns = ids, numbers, columns

    @classmethod
    def empty(cls) -> SnapshotPartition:
        import numpy as np

        return cls([], np.zeros((0, _FIXED), dtype=np.uint64), [])

    @classmethod
    def from_entries(cls, entries: Iterable[SnapshotEntry]) -> SnapshotPartition:
        packer = EntryPacker()
        for entry in entries:
            packer.add(*entry)
        return cls(packer.ids, packer.numbers(packer.columns), packer.columns)

    @classmethod
    def from_blob(cls, blob: bytes) -> SnapshotPartition:
        """A partition as stored, in this format, in version 1 or as text lines (an earlier
        version's)."""
        if not blob.startswith(MAGIC):
            return cls.from_entries(_text_entries(blob.decode()))
        import numpy as np

        end = blob.find(b"\n", len(MAGIC))
        try:
            header = json.loads(blob[len(MAGIC) : end])
            version, count = header["version"], header["profiles"]
            columns, ids_bytes = header["columns"], header["ids_bytes"]
        except (ValueError, KeyError, TypeError) as error:
            raise SnapshotFormatError(
                f"the header of a snapshot partition is unreadable: {error}"
            ) from error
        if version not in (1, FORMAT_VERSION):
            raise SnapshotFormatError(
                f"a snapshot partition in format {version!r} (this version reads 1 and "
                f"{FORMAT_VERSION}): a newer version of the app wrote it"
            )
        start = end + 1
        ids_text, numbers = blob[start : start + ids_bytes], blob[start + ids_bytes :]
        if version == FORMAT_VERSION:
            ids_text, numbers = _unpacked(ids_text, "ids"), _unpacked(numbers, "numbers")
        ids = ids_text.decode().split("\n") if count else []
        width = _FIXED + len(columns)
        if len(ids) != count or len(numbers) != count * width * 8:
            raise SnapshotFormatError(
                f"a snapshot partition holds {len(ids)} ids and {len(numbers)} bytes of numbers "
                f"where its header says {count} profiles of {width} numbers: it was cut short "
                "or altered"
            )
        values = np.frombuffer(numbers, dtype=">u8")
        if version == FORMAT_VERSION:  # column after column
            table = values.reshape(width, count).T.astype(np.uint64, order="C")
        else:
            table = values.astype(np.uint64).reshape(count, width)
        return cls(ids, table, list(columns))

    def __len__(self) -> int:
        return len(self.ids)

    def to_blob(self) -> bytes:
        """The partition as stored; a column no entry has (an attribute the mapping no longer
        sends, once no entry remembers it) is left out."""
        from shared.core.zstd_frames import compressor

        used = self.numbers[:, _FIXED:].any(axis=0).tolist()
        columns = [column for column, kept in zip(self.columns, used, strict=True) if kept]
        numbers = self.numbers
        if len(columns) < len(self.columns):
            numbers = numbers[:, [0, 1, *(_FIXED + at for at, kept in enumerate(used) if kept)]]
        packer = compressor()
        ids_frame = packer.compress("\n".join(self.ids).encode())
        header = {
            "version": FORMAT_VERSION,
            "profiles": len(self.ids),
            "columns": columns,
            "ids_bytes": len(ids_frame),
        }
        numbers_frame = packer.compress(numbers.T.astype(">u8").tobytes())
        return b"".join([MAGIC, json.dumps(header).encode(), b"\n", ids_frame, numbers_frame])

    @functools.cached_property
    def position(self) -> dict[str, int]:
        """Customer id as JSON -> its entry (the last one, should an id be there twice)."""
        return dict(zip(self.ids, range(len(self.ids)), strict=True))

    @property
    def raws(self) -> np.ndarray:
        return self.numbers[:, 1]

    def digest(self, at: int) -> str:
        value = int(self.numbers[at, 0])
        return f"{value:016x}" if value else ""

    def raw(self, at: int) -> str:
        value = int(self.numbers[at, 1])
        return f"{value:016x}" if value else ""

    def prints(self, at: int) -> dict[str, str]:
        values = self.numbers[at, _FIXED:].tolist()
        pairs = zip(self.columns, values, strict=True)
        return {column: f"{value:016x}" for column, value in pairs if value}

    def line(self, at: int) -> str:
        """The entry as text (`snapshot_line`)."""
        prints_json = jsonlines.dumps(self.prints(at))
        return snapshot_line(self.ids[at], self.digest(at), prints_json, self.raw(at))

    def select(self, keep: np.ndarray) -> SnapshotPartition:
        """The entries where `keep` (a boolean array) is true."""
        ids = [self.ids[at] for at in keep.nonzero()[0].tolist()]
        return SnapshotPartition(ids, self.numbers[keep], self.columns)

    def find(self, raws: np.ndarray) -> np.ndarray:
        """The entry holding each raw digest (uint64), or -1."""
        import numpy as np

        sorted_raws, sorted_at = self._by_raw
        if not len(sorted_raws):
            return np.full(len(raws), -1, dtype=np.int64)
        at = search_sorted(sorted_raws, raws)
        return np.where(sorted_raws[at] == raws, sorted_at[at], -1)

    @functools.cached_property
    def _by_raw(self) -> tuple[np.ndarray, np.ndarray]:
        """The known raw digests, sorted, and the entry of each."""
        import numpy as np

        known = np.flatnonzero(self.raws)
        order = known[np.argsort(self.raws[known], kind="stable")]
        return self.raws[order], order


def merged(parts: Sequence[SnapshotPartition]) -> SnapshotPartition:
    """One partition holding the entries of several (in order), in the union of their columns."""
    import numpy as np

    if len(parts) == 1:
        return parts[0]
    columns = list(dict.fromkeys(column for part in parts for column in part.columns))
    ids = [id_json for part in parts for id_json in part.ids]
    blocks = [_in_columns(part.numbers, part.columns, columns) for part in parts]
    numbers = np.concatenate(blocks) if blocks else np.zeros((0, _FIXED), dtype=np.uint64)
    return SnapshotPartition(ids, numbers, columns)


def assemble(
    packer: EntryPacker, copies: Sequence[tuple[SnapshotPartition, np.ndarray]]
) -> SnapshotPartition:
    """The entries packed, then the entries copied from partitions read (each an index array
    into one), in the union of their columns."""
    import numpy as np

    columns = list(packer.columns)
    for part, _ in copies:
        columns += [column for column in part.columns if column not in columns]
    ids = packer.ids + [part.ids[at] for part, taken in copies for at in taken.tolist()]
    blocks = [packer.numbers(columns)]
    blocks += [_in_columns(part.numbers[taken], part.columns, columns) for part, taken in copies]
    return SnapshotPartition(ids, np.concatenate(blocks), columns)


def _in_columns(numbers: np.ndarray, columns: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    """Rows of numbers in `columns`, rearranged into `wanted` (a superset): 0 where absent."""
    import numpy as np

    if list(columns) == list(wanted):
        return numbers
    out = np.zeros((len(numbers), _FIXED + len(wanted)), dtype=np.uint64)
    out[:, :_FIXED] = numbers[:, :_FIXED]
    place = {column: _FIXED + at for at, column in enumerate(wanted)}
    for at, column in enumerate(columns):
        out[:, place[column]] = numbers[:, _FIXED + at]
    return out


def _unpacked(frame: bytes, holding: str) -> bytes:
    """A frame's content; one that is damaged, cut short or followed by other bytes is
    SnapshotFormatError, naming what the frame holds."""
    from shared.core.zstd_frames import FrameError, frame_content

    try:
        content, after = frame_content(frame)
    except FrameError as error:
        raise SnapshotFormatError(f"the {holding} of a snapshot partition are {error}") from None
    if after:
        raise SnapshotFormatError(
            f"the {holding} of a snapshot partition are followed by other bytes"
        )
    return content


def _text_entries(text: str) -> Iterable[SnapshotEntry]:
    """The entries of a partition an earlier version wrote as text lines (blank lines skipped)."""
    for line in text.split("\n"):  # not splitlines: ids may hold U+2028
        if line:
            yield checked_entry(line)


_HEX16 = re.compile(r"[0-9a-f]{16}")


def checked_entry(line: str) -> SnapshotEntry:
    """A text entry (`snapshot_line`, or an earlier format) read from storage: a digest that is
    not 16 hex digits is taken as unknown (the row is validated again); fingerprints that are
    not an object of 16-hex-digit values are a damaged entry (SnapshotFormatError, naming no
    customer)."""
    id_json, digest, prints_json, raw = parse_snapshot_line(line)
    try:
        prints = jsonlines.loads(prints_json)
    except ValueError:
        prints = None
    if not isinstance(prints, dict) or not all(
        isinstance(value, str) and _HEX16.fullmatch(value) for value in prints.values()
    ):
        raise SnapshotFormatError(
            "a snapshot entry's fingerprints are not an object of 16-hex-digit values"
        )
    return id_json, _hex_or_unknown(digest), prints, _hex_or_unknown(raw)


def _hex_or_unknown(digest: str) -> str:
    return digest if _HEX16.fullmatch(digest) else ""
