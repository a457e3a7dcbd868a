"""Turn a valid profile into the Braze `/users/track` attributes object for an export."""

from __future__ import annotations

from typing import Any

from shared import jsonlines
from shared.definitions import Export
from shared.diff import membership_value
from shared.validation import Profile


def braze_attributes(profile: Profile, export: Export) -> dict[str, Any]:
    """The attributes object: identity, email, mapped attributes and the segment membership."""
    obj: dict[str, Any] = {"external_id": profile.customer_id, "email": profile.email}
    obj.update(profile.attributes)
    obj[export.membership_attribute] = membership_value(export, True)
    if not export.create_missing_users:
        obj["_update_existing_only"] = True
    return obj


def encode_object(obj: dict[str, Any]) -> str:
    """Compact JSON, UTF-8 kept as is (Braze accepts it, and it is smaller than \\u escapes);
    the working files' fast codec writes what the standard library would."""
    return jsonlines.dumps(obj)
