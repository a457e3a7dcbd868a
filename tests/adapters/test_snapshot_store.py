"""The snapshot store on Azurite: a partition count change reads the entries of another count
from partitions in columns and in an earlier version's text alike; a partition that must be
there is not taken for an empty one; a damaged partition is refused naming its blob and no
customer; a column no entry has any more is not carried on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from devtools.processes import Azurite
from shared.adapters.settings import StorageSettings
from shared.adapters.snapshot_store import SnapshotStore
from shared.adapters.storage import BlobNotFound, Storage
from shared.core.partitioning import partition_of
from shared.core.resource_names import SNAPSHOTS_CONTAINER
from shared.core.snapshot_partition import (
    EntryPacker,
    SnapshotFormatError,
    SnapshotPartition,
    assemble,
    checked_entry,
    snapshot_line,
)

IDS = [f"cust-{n:05d}" for n in range(400)] + ["Zoë 李 🎉", 'tab\tand "quotes"', "\ufeffbom"]


def _store(azurite: Azurite) -> tuple[Storage, SnapshotStore]:
    storage = Storage(StorageSettings(connection_string=azurite.connection_string))
    storage.ensure_resources()
    return storage, SnapshotStore(storage)


def _entry(customer_id: str) -> tuple[str, str, dict[str, str], str]:
    n = sum(map(ord, customer_id))
    return json.dumps(customer_id), f"{n:016x}", {"email": f"{n + 1:016x}"}, f"{n + 2:016x}"


def _write(
    storage: Storage, store: SnapshotStore, run_id: str, partitions: int, text_partitions: set[int]
) -> None:
    """A snapshot of IDS in `partitions`, those in `text_partitions` as an earlier version's
    text lines, the others in columns."""
    for partition in range(partitions):
        mine = [c for c in IDS if partition_of(c, partitions) == partition]
        writer = store.part_writer("e", "c", run_id, partition)
        for customer_id in mine:
            writer.add(*_entry(customer_id))
        writer.close()
        if partition in text_partitions:
            written = store.partition("e", "c", run_id, partition)
            text = "".join(f"{written.line(at)}\n" for at in range(len(written)))
            storage.write_bytes(
                SNAPSHOTS_CONTAINER, f"e/c/{run_id}/part-{partition:04d}.jsonl", text, "x/y"
            )


@pytest.mark.parametrize(("old_count", "new_count"), [(4, 8), (4, 2), (4, 1), (2, 16)])
def test_entries_of_another_partition_count_are_read_from_text_and_columns_alike(
    azurite: Azurite, old_count: int, new_count: int
) -> None:
    storage, store = _store(azurite)
    run_id = f"r{old_count}-{new_count}"
    _write(storage, store, run_id, old_count, text_partitions={0})
    seen: dict[str, tuple[str, str, dict[str, str], str]] = {}
    for partition in range(new_count):
        part = store.previous_partition("e", "c", (run_id, old_count), partition, new_count)
        for at, id_json in enumerate(part.ids):
            assert partition_of(json.loads(id_json), new_count) == partition
            assert id_json not in seen
            seen[id_json] = (id_json, part.digest(at), part.prints(at), part.raw(at))
    assert seen == {json.dumps(c): _entry(c) for c in IDS}


def test_a_partition_that_must_be_there_is_not_taken_for_an_empty_one(azurite: Azurite) -> None:
    _, store = _store(azurite)
    assert len(store.partition("e", "c", "missing", 3)) == 0  # a snapshot without it
    with pytest.raises(BlobNotFound):  # what finalizing a diffed partition must find
        store.partition("e", "c", "missing", 3, written=True)


def test_a_damaged_partition_is_refused_naming_its_blob_and_no_customer(
    azurite: Azurite,
) -> None:
    storage, store = _store(azurite)
    name = "e/c/damaged/part-0000.jsonl"
    for text in (
        '"alice@example.com"\t0123456789abcdef\t{"email":"zz"}\t\n',
        '"alice@example.com"\t0123456789abcdef\tnull\t\n',
        '"alice@example.com"\t0123456789abcdef\t["list"]\t\n',
        '"alice@example.com"\t0123456789abcdef\t{"email":"' + "1" * 15 + '"}\t\n',
    ):
        storage.write_bytes(SNAPSHOTS_CONTAINER, name, text, "x/y")
        with pytest.raises(SnapshotFormatError) as refused:
            store.partition("e", "c", "damaged", 0)
        assert name in str(refused.value) and "alice" not in str(refused.value)
    blob = SnapshotPartition.from_entries([_entry("alice@example.com")]).to_blob()
    storage.write_bytes(SNAPSHOTS_CONTAINER, name, blob[:-1], "x/y")
    with pytest.raises(SnapshotFormatError, match="cut short") as refused:
        store.partition("e", "c", "damaged", 0)
    assert name in str(refused.value) and "alice" not in str(refused.value)


def test_a_text_entry_with_an_empty_or_long_fingerprint_is_damaged() -> None:
    """Unchecked, an empty fingerprint would shift the next attribute's into its column."""
    for prints in ('{"email":""}', '{"email":"' + "1" * 17 + '"}', '{"email":7}'):
        with pytest.raises(SnapshotFormatError):
            checked_entry(f'"a"\t0123456789abcdef\t{prints}\t')
    assert checked_entry('"a"\tshort\t{}\tABC') == ('"a"', "", {}, "")  # unknown digests


def test_a_column_no_entry_has_is_not_carried_on() -> None:
    """An attribute the mapping no longer sends: once no entry remembers it, it is left out."""
    packer = EntryPacker(["email", "old_attribute"])
    packer.add('"a"', "1" * 16, {"email": "2" * 16}, "")
    read = SnapshotPartition.from_blob(assemble(packer, []).to_blob())
    assert read.columns == ["email"] and read.prints(0) == {"email": "2" * 16}
    kept = EntryPacker(["email"])
    kept.add('"b"', "", {"email": "3" * 16, "old_attribute": "4" * 16}, "")
    both = assemble(kept, [(read, np.array([0]))])
    assert SnapshotPartition.from_blob(both.to_blob()).columns == ["email", "old_attribute"]


def test_a_writer_counts_the_entries_added_written_and_copied(azurite: Azurite) -> None:
    """The count a diff records as its partition's profiles, and the manifest sums."""
    _, store = _store(azurite)
    writer = store.part_writer("e", "c", "run-count", 0)
    writer.add(*_entry(IDS[0]))
    writer.write(snapshot_line(json.dumps(IDS[1]), "", '{"email":"' + "1" * 16 + '"}'))
    source = _packed_ids(IDS[2:7])
    writer.copy(source, np.array([], dtype=np.int64))  # nothing taken
    writer.copy(source, np.array([0, 3, 4]))
    assert writer.profiles == 5
    writer.close()
    assert writer.profiles == 5
    read = store.partition("e", "c", "run-count", 0, written=True)
    assert read.ids == [json.dumps(c) for c in [*IDS[:2], IDS[2], IDS[5], IDS[6]]]


def _packed_ids(customer_ids: list[str]) -> SnapshotPartition:
    packer = EntryPacker()
    for customer_id in customer_ids:
        packer.add(*_entry(customer_id))
    return assemble(packer, [])
