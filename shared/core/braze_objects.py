"""Braze `/users/track` objects for an export: a valid profile's attributes, and the removal of
a profile that left the segment."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from shared.core.definitions import Export
from shared.core.fingerprints import Fingerprints
from shared.core.validation import Profile


def membership_value(export: Export, member: bool) -> Any:
    """How the export writes membership: the segment name in an array, or a boolean."""
    if export.membership == "boolean":
        return member
    return _array_update(export.segment, member)


@functools.cache
def _array_update(segment: str, member: bool) -> dict[str, list[str]]:
    """One object for every profile of a segment, never changed once made: a diff holds a
    partition's profiles at once, and a dict and a list each would be a quarter of them. The
    diff fingerprints it once and recognises it by identity (`fingerprints(obj, shared)`), so
    changing it in place would leave that fingerprint stale."""
    return {"add" if member else "remove": [segment]}


def removal(customer_id: str, export: Export, old: Fingerprints) -> dict[str, Any]:
    """The update for a profile that left the segment: its membership goes, nothing else
    (unless the export clears mapped attributes on leave). Never creates a user."""
    obj: dict[str, Any] = {
        "external_id": customer_id,
        export.membership_attribute: membership_value(export, False),
        "_update_existing_only": True,
    }
    if export.clear_attributes_on_leave:
        mapped = {"email", *(a.attribute for a in export.mapping.attributes)}
        obj.update({key: None for key in sorted(mapped & old.keys())})
    return obj


def clearable_attributes(export: Export) -> frozenset[str]:
    """Attributes a blank source value may clear: only those the mapping still sends."""
    return frozenset(a.attribute for a in export.mapping.attributes)


def braze_attributes(export: Export) -> Callable[[Profile], dict[str, Any]]:
    """The attributes object of a profile: identity, email, mapped attributes and the segment
    membership. Made once per export's partition: it runs for every profile of a segment."""
    membership_attribute = export.membership_attribute
    member = membership_value(export, True)
    update_only = not export.create_missing_users

    def attributes(profile: Profile) -> dict[str, Any]:
        obj: dict[str, Any] = {"external_id": profile.customer_id, "email": profile.email}
        obj.update(profile.attributes)
        obj[membership_attribute] = member
        if update_only:
            obj["_update_existing_only"] = True
        return obj

    return attributes
