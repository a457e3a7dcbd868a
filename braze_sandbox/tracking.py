"""Per-object validation and application for /users/track, following Braze's rules for
identifiers and partial failure: bad objects are reported by index, the rest still apply."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from braze_sandbox.config import LimitConfig
from braze_sandbox.store import UserProfile, UserStore

INPUT_ARRAYS = ("attributes", "events", "purchases")

# Error types Braze documents by name.
EXTERNAL_USER_ID_TOO_LARGE = "EXTERNAL_USER_ID_TOO_LARGE"
BLACKLISTED_EXTERNAL_USER_ID = "BLACKLISTED_EXTERNAL_USER_ID"
EMAIL_BAD_FORMAT = "EMAIL_BAD_FORMAT"
BAD_EMAIL_SUBSCRIPTION_STATE = "BAD_EMAIL_SUBSCRIPTION_STATE"
# Braze words these as sentences; the texts below are the sandbox's own.
MISSING_IDENTIFIER = "'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required"
MULTIPLE_PRIMARY_IDENTIFIERS = "only one of 'external_id', 'user_alias' or 'braze_id' is allowed"
NOT_AN_OBJECT = "each entry must be a JSON object"
BAD_EXTERNAL_ID = "'external_id' must be a non-empty string"
BAD_USER_ALIAS = "'user_alias' must have string 'alias_name' and 'alias_label'"
BAD_BRAZE_ID = "'braze_id' must be a string"
BAD_PHONE = "'phone' must be a string"
MISSING_EVENT_NAME = "'name' must be a non-empty string"
MISSING_PRODUCT_ID = "'product_id' must be a non-empty string"

EXTERNAL_ID_MAX_BYTES = 987
EMAIL_SUBSCRIPTION_STATES = frozenset({"opted_in", "subscribed", "unsubscribed"})
EMAIL_MAX_LENGTH = 254
# Syntax Braze enforces on API input: no whitespace, one @, an ASCII (Punycode) host whose
# labels are 1-63 characters not starting or ending with "-", and a top-level label that
# starts with a letter (so it is not numeric). Possessive quantifiers: no backtracking is
# ever needed here, and skipping it makes the check measurably cheaper.
_EMAIL_PATTERN = re.compile(
    r"[^\s@]{1,64}+@(?:(?!-)[A-Za-z0-9-]{1,63}+(?<!-)\.)++(?!-)[A-Za-z][A-Za-z0-9-]{0,62}+(?<!-)"
)
_email_match = _EMAIL_PATTERN.fullmatch


@dataclass(slots=True)
class TrackOutcome:
    """What a valid /users/track body did; `errors` are Braze's per-object error items."""

    processed: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    objects_applied: int = 0
    data_points: int = 0

    def response_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": "success"}
        for name, count in self.processed.items():
            body[f"{name}_processed"] = count
        if self.errors:
            body["errors"] = self.errors
        return body


class TrackProcessor:
    """Applies the arrays of one request, which the caller has already checked for shape."""

    def __init__(self, store: UserStore) -> None:
        self.store = store

    def process(self, arrays: dict[str, list[Any]], limits: LimitConfig) -> TrackOutcome:
        """Attributes first, then events, then purchases: Braze's usual processing order."""
        outcome = TrackOutcome()
        appliers = (
            ("attributes", self._apply_attributes),
            ("events", self._apply_event),
            ("purchases", self._apply_purchase),
        )
        for name, apply_object in appliers:
            objects = arrays.get(name)
            if objects is None:
                continue
            processed = 0
            for index, obj in enumerate(objects):
                error = apply_object(obj, limits, outcome)
                if error is None:
                    processed += 1
                else:
                    outcome.errors.append({"type": error, "input_array": name, "index": index})
            outcome.processed[name] = processed
        return outcome

    # Each applier returns the object's error type, or None when it was accepted, which is not
    # the same as applied (update-only mode may find no one to update).

    def _apply_attributes(self, obj: Any, limits: LimitConfig, outcome: TrackOutcome) -> str | None:
        if type(obj) is not dict:
            return NOT_AN_OBJECT
        email_subscribe = obj.get("email_subscribe")
        if email_subscribe is not None and email_subscribe not in EMAIL_SUBSCRIPTION_STATES:
            return BAD_EMAIL_SUBSCRIPTION_STATE
        error, profile = self._resolve_profile(obj, limits)
        if profile is not None:
            outcome.data_points += self.store.apply_attributes(profile, obj, limits.array_cap)
            outcome.objects_applied += 1
        return error

    def _apply_event(self, obj: Any, limits: LimitConfig, outcome: TrackOutcome) -> str | None:
        if type(obj) is not dict:
            return NOT_AN_OBJECT
        name = obj.get("name")
        if type(name) is not str or not name:
            return MISSING_EVENT_NAME
        error, profile = self._resolve_profile(obj, limits)
        if profile is not None:
            self.store.record_event(profile, name)
            outcome.data_points += 1
            outcome.objects_applied += 1
        return error

    def _apply_purchase(self, obj: Any, limits: LimitConfig, outcome: TrackOutcome) -> str | None:
        if type(obj) is not dict:
            return NOT_AN_OBJECT
        product_id = obj.get("product_id")
        if type(product_id) is not str or not product_id:
            return MISSING_PRODUCT_ID
        error, profile = self._resolve_profile(obj, limits)
        if profile is not None:
            self.store.record_purchase(profile, product_id)
            outcome.data_points += 1
            outcome.objects_applied += 1
        return error

    def _resolve_profile(
        self, obj: dict[str, Any], limits: LimitConfig
    ) -> tuple[str | None, UserProfile | None]:
        """Find (or create) the target profile; (None, None) means silently skip: update-only
        mode found no one, or a braze_id that does not exist."""
        external_id = obj.get("external_id")
        alias = obj.get("user_alias")
        braze_id = obj.get("braze_id")
        if (external_id is not None) + (alias is not None) + (braze_id is not None) > 1:
            return MULTIPLE_PRIMARY_IDENTIFIERS, None
        email = obj.get("email")
        phone = obj.get("phone")
        if phone is not None and type(phone) is not str:
            return BAD_PHONE, None
        update_only = obj.get("_update_existing_only")
        store = self.store
        alias_key: tuple[str, str] | None = None
        secondary: tuple[str, str] | None = None
        if external_id is not None:
            if type(external_id) is not str or not external_id:
                return BAD_EXTERNAL_ID, None
            # Only long ids can exceed the byte limit (4 bytes per character at most).
            if len(external_id) * 4 > EXTERNAL_ID_MAX_BYTES and (
                len(external_id.encode()) > EXTERNAL_ID_MAX_BYTES
            ):
                return EXTERNAL_USER_ID_TOO_LARGE, None
            if external_id in limits.blocklist:
                return BLACKLISTED_EXTERNAL_USER_ID, None
            profile = store.by_external_id.get(external_id)
            may_create = update_only is not True
        elif alias is not None:
            alias_key = _alias_key(alias)
            if alias_key is None:
                return BAD_USER_ALIAS, None
            profile = store.by_alias(alias_key)
            # Braze only creates alias-only profiles when asked to explicitly.
            may_create = update_only is False
        elif braze_id is not None:
            if type(braze_id) is not str:
                return BAD_BRAZE_ID, None
            profile = store.by_braze_id(braze_id)
            may_create = False  # Braze assigns braze_ids, so one cannot create a profile
        elif email is not None or phone is not None:
            if email is not None and type(email) is not str:
                return EMAIL_BAD_FORMAT, None
            secondary = ("email", email) if email is not None else ("phone", phone)
            profile = store.by_secondary(*secondary)
            may_create = update_only is not True
        else:
            return MISSING_IDENTIFIER, None
        # An address the profile already holds was validated when it was set: skipping the
        # check then is a measurable saving when an exporter re-sends unchanged users.
        if (
            email is not None
            and (profile is None or profile.attributes.get("email") != email)
            and not (
                type(email) is str
                and len(email) <= EMAIL_MAX_LENGTH
                and _email_match(email) is not None
            )
        ):
            return EMAIL_BAD_FORMAT, None
        if profile is None and may_create:
            profile = store.create(external_id, alias_key, secondary)
        return None, profile


def _alias_key(alias: Any) -> tuple[str, str] | None:
    if type(alias) is not dict:
        return None
    name, label = alias.get("alias_name"), alias.get("alias_label")
    if type(name) is not str or type(label) is not str:
        return None
    return name, label
