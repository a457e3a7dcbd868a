"""Typed messages that cross the queues. They carry references only, never profile data.

A Storage queue message is capped at 64 KB, and profile data on a queue would leak into poison
queues and logs; chunk contents live in blobs (claim-check pattern).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, TypeVar

M = TypeVar("M", bound="_Message")


class MessageError(ValueError):
    """A queue message that is not one this version understands."""


@dataclass(frozen=True)
class _Message:
    kind: ClassVar[str]
    version: ClassVar[int] = 1

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "version": self.version, **asdict(self)})

    @classmethod
    def from_json(cls: type[M], text: str | bytes) -> M:
        try:
            data: dict[str, Any] = json.loads(text)
        except ValueError as error:
            raise MessageError(f"not JSON: {error}") from error
        if not isinstance(data, dict) or data.get("kind") != cls.kind:
            raise MessageError(f"expected a {cls.kind!r} message, got {str(text)[:200]!r}")
        data = cls._upgrade(data)
        if data.get("version") != cls.version:
            raise MessageError(
                f"{cls.kind} message version {data.get('version')!r} is not supported "
                f"(this code reads version {cls.version})"
            )
        names = {f.name for f in fields(cls)}
        missing = names - data.keys()
        if missing:
            raise MessageError(f"{cls.kind} message lacks {', '.join(sorted(missing))}")
        return cls(**{name: data[name] for name in names})

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A message an earlier version queued, in this version's form where it has one."""
        return data


@dataclass(frozen=True)
class ExportJob(_Message):
    """Plan one run of an export: read its source and cut it into chunks."""

    kind: ClassVar[str] = "export-job"
    run_id: str
    export_name: str


@dataclass(frozen=True)
class SplitJob(_Message):
    """Split one range of a run's source into its pieces of the `partitions` hash partitions.

    The range is bytes `start` to `end` (-1: to the end) of the source file, or of the CDM
    folder's partition file `file_index` (-1: a plain file); its first record starts on line
    `first_line`.
    """

    kind: ClassVar[str] = "split-job"
    version: ClassVar[int] = 2
    run_id: str
    export_name: str
    split: int
    splits: int
    partitions: int
    start: int
    end: int
    first_line: int
    file_index: int = -1

    @property
    def length(self) -> int | None:
        """The range's bytes, None when it runs to the file's end."""
        return None if self.end < 0 else self.end - self.start

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("version") != 1:
            return data
        # Version 1 read a CDM folder's partition files whole, one per split, to the end (-1);
        # a plain file's ranges all end at an offset.
        file_index = data.get("split", -1) if data.get("end") == -1 else -1
        return {**data, "version": 2, "file_index": file_index}


@dataclass(frozen=True)
class PartitionJob(_Message):
    """Diff `count` partitions of a run's segment against the export's snapshot, one after
    another from `partition` on: one, or a few of a delta's (`split_source.queue_partitions`)."""

    kind: ClassVar[str] = "partition-job"
    version: ClassVar[int] = 2
    run_id: str
    export_name: str
    partition: int
    partitions: int
    count: int = 1

    def __post_init__(self) -> None:
        numbers = (self.partition, self.partitions, self.count)
        if not all(type(n) is int for n in numbers):
            raise MessageError(f"a partition job's partitions are not whole numbers: {self!r}")
        if self.count < 1 or self.partition < 0:
            raise MessageError(f"a partition job names no partition: {self!r}")
        if self.partition + self.count > self.partitions:
            raise MessageError(f"a partition job names partitions past its {self.partitions}")

    @property
    def numbers(self) -> range:
        """The partitions the job diffs."""
        return range(self.partition, self.partition + self.count)

    @property
    def label(self) -> str:
        """Its partitions for people: "partition 5", or "partitions 4-7"."""
        if self.count == 1:
            return f"partition {self.partition}"
        return f"partitions {self.partition}-{self.partition + self.count - 1}"

    def to_json(self) -> str:
        """A job of one partition as version 1 wrote it, which earlier versions read: during a
        deployment they may still take a first export's jobs."""
        if self.count != 1:
            return super().to_json()
        data = {name: value for name, value in asdict(self).items() if name != "count"}
        return json.dumps({"kind": self.kind, "version": 1, **data})

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("version") != 1:
            return data
        return {**data, "version": 2, "count": 1}  # version 1 diffed one partition a job


@dataclass(frozen=True)
class ChunkJob(_Message):
    """Deliver one chunk of a run to Braze: its blobs' profiles in order, `rows` in all.

    Chunk blobs travel together up to the export's chunk size (a delta's few changes per
    partition, or about three partitions of a first export), so they fill whole requests and each
    message keeps a worker busy longer; `partitions` are those the blobs came from (a replay's
    chunk: [ANY_PARTITION]).
    """

    kind: ClassVar[str] = "chunk-job"
    version: ClassVar[int] = 3
    run_id: str
    export_name: str
    chunk_index: int
    blob_names: list[str]
    rows: int
    partitions: list[int]

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("version") != 2:
            return data
        upgraded = {**data, "version": 3}  # version 2 named one blob of one partition per chunk
        if "blob_name" in data:
            upgraded["blob_names"] = [upgraded.pop("blob_name")]
        if "partition" in data:
            upgraded["partitions"] = [upgraded.pop("partition")]
        return upgraded


PlanningJob = ExportJob | SplitJob | PartitionJob


def planning_job(text: str | bytes) -> PlanningJob:
    """A message of the planning queue (`JOBS_QUEUE`), whichever step it asks for."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise MessageError(f"not JSON: {error}") from error
    kind = data.get("kind") if isinstance(data, dict) else None
    for step in (ExportJob, SplitJob, PartitionJob):
        if kind == step.kind:
            return step.from_json(text)
    raise MessageError(f"expected a planning job message, got {str(text)[:200]!r}")


ANY_PARTITION = -1  # a replay's chunk: its profiles may be of any partition
