"""`mapped_values`: what a piece and a rejected row keep of a row's values."""

from __future__ import annotations

from shared.pipeline.run_files import mapped_values

MAPPED = frozenset({"CustomerId", "Email", "Tags"})


def test_a_row_of_mapped_columns_only_is_kept_as_it_is() -> None:
    row = {"Email": "zoë@example.com", "CustomerId": "c-1"}
    assert mapped_values(row, MAPPED) is row


def test_other_columns_are_dropped_and_the_rows_order_kept() -> None:
    row = {
        "Street": "12 Rue de l'Église, Apt 3",
        "Email": "zoë@example.com",
        "Phone": "+1 555\n0100 📞",
        "CustomerId": "c-1",
    }
    assert list(mapped_values(row, MAPPED).items()) == [
        ("Email", "zoë@example.com"),
        ("CustomerId", "c-1"),
    ]


def test_a_missing_mapped_column_stays_missing_and_nested_values_stay_whole() -> None:
    row = {"CustomerId": "c-1", "Extra": {"nested": [1, 2]}, "Tags": {"add": ["vip"]}}
    assert mapped_values(row, MAPPED) == {"CustomerId": "c-1", "Tags": {"add": ["vip"]}}


def test_a_missing_mapped_column_keeps_the_keys_that_differ_from_it_only_in_case() -> None:
    """A JSON Lines record keyed `EMAIL` fails `Email` as missing: its report shows why."""
    row = {"CustomerId": "c-1", "EMAIL": "zoë@example.com", "email_2": "x", "Phone": "1"}
    assert mapped_values(row, MAPPED) == {"CustomerId": "c-1", "EMAIL": "zoë@example.com"}
