"""A snapshot partition as its blob holds it, for a delta's diff to take in bulk.

Most profiles of a delta run are rows the snapshot holds byte for byte (`raw_records`): the
split files them as matched records, and the diff finds each one's snapshot line by its raw
digest, the last field of the line, all at once (numpy). The lines it finds are copied as they
are; only the others (changed, new, leaving, or in doubt) are handled one by one.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

_RAW_HEX = 16  # an 8-byte raw digest in hex, after the line's last tab


class SnapshotPartition:
    """The lines of one snapshot partition (the current format: four fields), each one's
    customer id as JSON, and where each raw digest is."""

    def __init__(self, blob: bytes) -> None:
        import numpy as np

        text = blob.decode()
        self.lines = text.split("\n")
        if self.lines and not self.lines[-1]:
            self.lines.pop()
        self.ids = [line[: line.find("\t")] for line in self.lines]
        self.position = dict(zip(self.ids, range(len(self.ids)), strict=True))
        self.raws, known = _raw_digests(np.frombuffer(blob, dtype=np.uint8), len(self.lines))
        lines_with_raw = np.flatnonzero(known)
        by_raw = np.argsort(self.raws[lines_with_raw])
        self._sorted_lines = lines_with_raw[by_raw]
        self._sorted_raws = self.raws[self._sorted_lines]

    def __len__(self) -> int:
        return len(self.lines)

    def find(self, raws: np.ndarray) -> np.ndarray:
        """The line holding each raw digest (uint64), or -1."""
        import numpy as np

        if not len(self._sorted_raws):
            return np.full(len(raws), -1, dtype=np.int64)
        at = np.searchsorted(self._sorted_raws, raws)
        at[at == len(self._sorted_raws)] = 0
        return np.where(self._sorted_raws[at] == raws, self._sorted_lines[at], -1)


def _raw_digests(octets: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Each line's raw digest as uint64, and whether it has one (its last field is 16 hex
    digits after a tab)."""
    import numpy as np

    ends = np.flatnonzero(octets == 10)
    if len(ends) < count:  # the last line has no line break
        ends = np.append(ends, len(octets))
    ends = ends[:count]
    starts = np.concatenate(([0], ends[:-1] + 1)) if count else ends
    known = (ends - starts) > _RAW_HEX
    columns = np.maximum(ends - _RAW_HEX, 0)[:, None] + np.arange(_RAW_HEX)
    digits = octets[np.minimum(columns, max(len(octets) - 1, 0))]  # a short line: no digest
    nibbles = _hex_values()[digits]
    known &= (nibbles < 16).all(axis=1) & (octets[np.maximum(ends - _RAW_HEX - 1, 0)] == 9)
    raws = np.zeros(count, dtype=np.uint64)
    for column in range(_RAW_HEX):
        raws = (raws << np.uint64(4)) | nibbles[:, column].astype(np.uint64)
    return raws, known


@functools.cache
def _hex_values() -> np.ndarray:
    """Each byte's value as a hex digit, or 255."""
    import numpy as np

    values = np.full(256, 255, dtype=np.uint8)
    values[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
    values[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
    return values
