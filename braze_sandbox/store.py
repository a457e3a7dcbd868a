"""In-memory user profiles and Braze's attribute semantics (what "applied" means per field)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Fields of Braze's user attributes object; everything else is a custom attribute.
STANDARD_ATTRIBUTES = frozenset(
    {
        "country",
        "current_location",
        "date_of_first_session",
        "date_of_last_session",
        "dob",
        "email",
        "email_click_tracking_disabled",
        "email_open_tracking_disabled",
        "email_subscribe",
        "facebook",
        "first_name",
        "gender",
        "home_city",
        "language",
        "last_name",
        "marked_email_as_spam_at",
        "phone",
        "push_subscribe",
        "push_tokens",
        "subscription_groups",
        "time_zone",
        "twitter",
    }
)
# Keys that identify the profile or steer the update; they are never stored as attributes.
CONTROL_KEYS = frozenset(
    {"external_id", "user_alias", "braze_id", "_update_existing_only", "_merge_objects"}
)
# Subscription state changes are free under data-point billing (reference section 5).
NON_BILLABLE_ATTRIBUTES = frozenset({"email_subscribe", "push_subscribe", "subscription_groups"})
SECONDARY_IDENTIFIERS = ("email", "phone")
ARRAY_OPERATORS = frozenset({"add", "remove"})
MAX_CUSTOM_LENGTH = 255

# How apply_attributes treats a key, resolved with one dict lookup per key because this loop
# runs ~100,000 times a second under load. Keys not listed are custom attributes.
_CONTROL, _BILLED, _FREE, _SECONDARY = range(4)
_SCALAR_TYPES = frozenset({int, float, bool})
_KEY_ROLES: dict[str, int] = {
    **{key: _BILLED for key in STANDARD_ATTRIBUTES},
    **{key: _FREE for key in NON_BILLABLE_ATTRIBUTES},
    **{key: _SECONDARY for key in SECONDARY_IDENTIFIERS},
    **{key: _CONTROL for key in CONTROL_KEYS},
}


class UserProfile:
    """One Braze user, kept small for 1M-user runs: events and purchases are counts only, and
    containers a typical exporter never fills are allocated on first use."""

    __slots__ = (
        "aliases",
        "attributes",
        "events",
        "external_id",
        "number",
        "purchases",
        "updated_seq",
    )

    def __init__(self, number: int, external_id: str | None) -> None:
        self.number = number
        self.external_id = external_id
        self.aliases: tuple[tuple[str, str], ...] = ()
        self.attributes: dict[str, Any] = {}
        self.events: dict[str, int] | None = None
        self.purchases: dict[str, int] | None = None
        self.updated_seq = 0

    @property
    def braze_id(self) -> str:
        """24 hex digits like Braze's ids, derived from the creation number (cheap creates)."""
        return format(self.number, "024x")

    def to_dict(self) -> dict[str, Any]:
        """The sandbox's own read-back view: standard and custom attributes in one mapping."""
        return {
            "external_id": self.external_id,
            "braze_id": self.braze_id,
            "user_aliases": [{"alias_name": n, "alias_label": lbl} for n, lbl in self.aliases],
            "attributes": self.attributes,
            "events": self.events or {},
            "purchases": self.purchases or {},
        }

    def to_export(self, fields: Iterable[str] | None) -> dict[str, Any]:
        """Braze's /users/export/ids shape, limited to `fields` when the caller names them."""
        record: dict[str, Any] = {
            "external_id": self.external_id,
            "braze_id": self.braze_id,
            "user_aliases": [{"alias_name": n, "alias_label": lbl} for n, lbl in self.aliases],
        }
        custom: dict[str, Any] = {}
        for key, value in self.attributes.items():
            if key in STANDARD_ATTRIBUTES:
                record[key] = value
            else:
                custom[key] = value
        record["custom_attributes"] = custom
        events, purchases = self.events or {}, self.purchases or {}
        record["custom_events"] = [{"name": n, "count": c} for n, c in events.items()]
        record["purchases"] = [{"name": n, "count": c} for n, c in purchases.items()]
        if fields is None:
            return record
        return {field: record[field] for field in fields if field in record}


class UserStore:
    """Profiles indexed by every identifier Braze resolves: primary ones and email/phone."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._profiles: list[UserProfile] = []  # position == UserProfile.number
        # Public for reading: a lookup per object is hot enough that a method call shows.
        self.by_external_id: dict[str, UserProfile] = {}
        self._by_alias: dict[tuple[str, str], UserProfile] = {}
        # Built on the first email/phone lookup, so exporters that identify users by external_id
        # never pay to maintain it (it would cost about a tenth of a create).
        self._by_secondary: dict[str, dict[str, list[UserProfile]]] | None = None
        self._seq = 0

    def __len__(self) -> int:
        return len(self._profiles)

    def profiles(self) -> list[UserProfile]:
        """A snapshot list, safe to iterate while requests keep mutating the store."""
        return self._profiles.copy()

    def by_alias(self, alias: tuple[str, str]) -> UserProfile | None:
        return self._by_alias.get(alias)

    def by_braze_id(self, braze_id: str) -> UserProfile | None:
        try:
            number = int(braze_id, 16)
        except ValueError:
            return None
        if number >= len(self._profiles) or format(number, "024x") != braze_id:
            return None
        return self._profiles[number]

    def by_secondary(self, field: str, value: str) -> UserProfile | None:
        """Braze's rule for email/phone lookups: the most recently updated profile that has an
        external_id wins, otherwise the most recently updated one."""
        if self._by_secondary is None:
            self._by_secondary = {name: {} for name in SECONDARY_IDENTIFIERS}
            for profile in self._profiles:
                for indexed_field in SECONDARY_IDENTIFIERS:
                    self._reindex(profile, indexed_field, None)
        candidates = self._by_secondary[field].get(_index_key(field, value))
        if not candidates:
            return None
        return max(candidates, key=lambda p: (p.external_id is not None, p.updated_seq))

    def create(
        self,
        external_id: str | None,
        alias: tuple[str, str] | None,
        secondary: tuple[str, str] | None,
    ) -> UserProfile:
        """A new profile known by exactly the identifier it was created from."""
        profile = UserProfile(len(self._profiles), external_id)
        self._profiles.append(profile)
        if external_id is not None:
            self.by_external_id[external_id] = profile
        if alias is not None:
            profile.aliases = (alias,)
            self._by_alias[alias] = profile
        if secondary is not None:
            field, value = secondary
            self._set_secondary(profile, field, value)
        return profile

    def apply_attributes(self, profile: UserProfile, update: dict[str, Any], array_cap: int) -> int:
        """Apply one attributes object and return the data points Braze would bill for it.

        Like Braze, some updates are accepted yet silently not applied (and not billed): custom
        keys or string values over 255 characters.

        This loop runs over 100,000 times a second under load, and a Python call costs about as
        much as the work of a simple attribute, so the common cases are written out inline.
        """
        attributes = profile.attributes
        data_points = 0
        for key, value in update.items():
            role = _KEY_ROLES.get(key)
            if role is None:  # a custom attribute
                if len(key) > MAX_CUSTOM_LENGTH:
                    continue
                value_type = type(value)
                if value_type is str:
                    if len(value) <= MAX_CUSTOM_LENGTH:
                        attributes[key] = value
                        data_points += 1
                elif value_type is dict and value and value.keys() <= ARRAY_OPERATORS:
                    attributes[key] = _modified_array(attributes.get(key), value, array_cap)
                    data_points += 1
                elif value_type in _SCALAR_TYPES:
                    attributes[key] = value
                    data_points += 1
                else:
                    data_points += _set_other_custom(attributes, key, value, array_cap)
            elif role == _CONTROL:
                continue
            elif role == _SECONDARY:
                if self._by_secondary is not None:
                    self._set_secondary(profile, key, value)
                elif value is None:
                    attributes.pop(key, None)
                else:
                    attributes[key] = value
                data_points += 1
            else:
                if value is None:
                    attributes.pop(key, None)
                else:
                    attributes[key] = value
                if role == _BILLED:
                    data_points += 1
        self._seq += 1
        profile.updated_seq = self._seq
        return data_points

    def record_event(self, profile: UserProfile, name: str) -> None:
        events = profile.events = profile.events or {}
        events[name] = events.get(name, 0) + 1
        self._touch(profile)

    def record_purchase(self, profile: UserProfile, product_id: str) -> None:
        purchases = profile.purchases = profile.purchases or {}
        purchases[product_id] = purchases.get(product_id, 0) + 1
        self._touch(profile)

    def _touch(self, profile: UserProfile) -> None:
        """Remember update order, which decides email/phone lookups between duplicates."""
        self._seq += 1
        profile.updated_seq = self._seq

    def _set_secondary(self, profile: UserProfile, field: str, value: str | None) -> None:
        old = profile.attributes.get(field)
        if value is None:
            profile.attributes.pop(field, None)
        else:
            profile.attributes[field] = value
        if self._by_secondary is not None:
            self._reindex(profile, field, old)

    def _reindex(self, profile: UserProfile, field: str, old: str | None) -> None:
        """Move the profile in the email/phone index from `old` to its current value; call it
        after the attribute changed (old=None indexes the profile for the first time)."""
        assert self._by_secondary is not None
        index = self._by_secondary[field]
        new = profile.attributes.get(field)
        if old == new:
            return
        if old is not None:
            holders = index[_index_key(field, old)]
            holders.remove(profile)
            if not holders:
                del index[_index_key(field, old)]
        if new is not None:
            index.setdefault(_index_key(field, new), []).append(profile)


def _set_other_custom(attributes: dict[str, Any], key: str, value: Any, array_cap: int) -> int:
    """The rarer custom values: null, whole arrays, increments and nested objects (the common
    ones are inlined in apply_attributes). Returns the data points billed."""
    if value is None:
        attributes.pop(key, None)
    elif type(value) is list:
        attributes[key] = value[-array_cap:]
    elif value.keys() == {"inc"} and type(value["inc"]) is int:
        current = attributes.get(key)
        attributes[key] = (current if type(current) is int else 0) + value["inc"]
    else:  # a nested object: JSON has no other types left
        attributes[key] = value
        return _leaf_count(value)
    return 1


def _index_key(field: str, value: str) -> str:
    """Emails match case-insensitively; phone numbers as sent. (islower() first spares a copy
    per user for the usual all-lowercase address.)"""
    return value if field != "email" or value.islower() else value.lower()


def _modified_array(current: Any, operations: dict[str, Any], cap: int) -> list[Any]:
    """Apply {"remove": [...], "add": [...]}: removals first, then each added value moves to
    (or lands at) the end, so a value in both lists ends up present. Over the cap, the oldest
    values are dropped so the most recently added `cap` remain."""
    values = list(current) if type(current) is list else []
    removals = operations.get("remove")
    if type(removals) is list:
        values = [v for v in values if v not in removals]
    additions = operations.get("add")
    if type(additions) is list:
        for value in additions:
            if value in values:
                values.remove(value)
            values.append(value)
    if len(values) > cap:
        del values[:-cap]
    return values


def _leaf_count(value: Any) -> int:
    """Nested objects bill one data point per key (reference section 5)."""
    if type(value) is dict:
        return sum(_leaf_count(v) for v in value.values()) or 1
    return 1
