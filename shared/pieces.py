"""The partition piece format: one split job's rows of one partition, as the diff reads them.

One line per row, its fields separated by tabs, each field JSON (which escapes every tab and
newline inside a value):

- a valid row: `order, customer id, data points, fingerprints, object`;
- a row rejected for another field than its id: `order, customer id` (the profile is still in
  the segment, so the diff must not take it for one that left).

The split computes the fingerprints and encodings that the diff needs for every profile, from
the object it has just built; the diff of a new profile then only joins strings, and decodes
the object only when it has to send part of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from shared import jsonlines
from shared.diff import fingerprints

# A piece row: (order, customer id, customer id as JSON, data points, fingerprints as JSON,
# object as JSON); the last three are 0, "" and "" for a row that keeps its place only.
PieceRow = tuple[int, str, str, int, str, str]


def valid_line(order: int, customer_id: str, obj: dict[str, Any]) -> str:
    dumps = jsonlines.dumps
    prints = fingerprints(obj)  # one per attribute Braze bills: their count is the data points
    return f"{order}\t{dumps(customer_id)}\t{len(prints)}\t{dumps(prints)}\t{dumps(obj)}\n"


def kept_line(order: int, customer_id: str) -> str:
    return f"{order}\t{jsonlines.dumps(customer_id)}\n"


def read_rows(text: str) -> Iterator[PieceRow]:
    """The rows of one piece's text, in the order the split wrote them."""
    loads = jsonlines.loads
    for line in text.split("\n"):
        if not line:
            continue
        if line.startswith("["):
            raise ValueError(
                "this partition piece was written by an earlier version of the app (a JSON "
                "array per line); start the run again"
            )
        fields = line.split("\t")
        order, customer_id_json = int(fields[0]), fields[1]
        if len(fields) == 2:
            yield order, loads(customer_id_json), customer_id_json, 0, "", ""
        else:
            _, _, points, prints_json, obj_json = fields
            yield (
                order,
                loads(customer_id_json),
                customer_id_json,
                int(points),
                prints_json,
                obj_json,
            )
