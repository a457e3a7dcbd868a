"""The queue extension's rules that need no storage: poison names, encoding, idle back-off."""

from __future__ import annotations

from datetime import timedelta

import pytest

from devhost.hostconfig import MessageEncoding
from devhost.queues import (
    MessageDecodingError,
    RandomizedBackoff,
    decode_message,
    encode_message,
    poison_queue_name,
)


def test_poison_queue_names() -> None:
    assert poison_queue_name("jobs") == "jobs-poison"
    assert poison_queue_name("jobs-poison") is None
    assert poison_queue_name("j" * 57) is None


def test_base64_round_trip_and_strict_decoding() -> None:
    stored = encode_message("héllo", MessageEncoding.BASE64)

    assert stored == "aMOpbGxv"
    assert decode_message(stored, MessageEncoding.BASE64) == "héllo".encode()
    assert decode_message("aMOp\nbGxv", MessageEncoding.BASE64) == "héllo".encode()
    with pytest.raises(MessageDecodingError):
        decode_message("not base64!", MessageEncoding.BASE64)


def test_no_encoding_stores_text_as_is() -> None:
    assert encode_message("plain", MessageEncoding.NONE) == "plain"
    assert decode_message("plain", MessageEncoding.NONE) == b"plain"


def test_idle_back_off_grows_to_the_maximum_and_resets_when_messages_arrive() -> None:
    maximum = timedelta(seconds=2)
    backoff = RandomizedBackoff(maximum)

    delays = [backoff.next_delay(found_messages=False) for _ in range(12)]

    assert delays[0] == timedelta(milliseconds=100)
    assert delays == sorted(delays)
    assert delays[-1] == maximum
    assert backoff.next_delay(found_messages=True) == timedelta(milliseconds=100)
