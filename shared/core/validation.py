"""Row validation: every rule Braze would reject a profile for, checked before anything is sent.

Values are trimmed of surrounding whitespace and converted to the mapped type; nothing else
about them is rewritten. A rejected row gets every reason that applies, not just the first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from shared.core.definitions import AttributeMapping, Mapping
from shared.core.jsonlines import kind_of

MAX_EXTERNAL_ID_BYTES = 987
MAX_STRING_CHARS = 255
MAX_EMAIL_CHARS = 254
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_DOMAIN_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_WHITESPACE = re.compile(r"\s")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_DECIMAL = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
# ISO 8601 extended form, as Braze documents it: a date, or a date and time with an offset.
_ISO_DATE = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?$"
)


# The common shape of a valid address, a strict subset of what `email_problem` accepts: plain
# local part, ASCII labels, an alphabetic top-level domain. A match skips the full checks.
_PLAIN_EMAIL = re.compile(
    r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)


_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a row is rejected: a stable code for tallies and a sentence for people."""

    code: str
    message: str


# Not frozen: one is made per row, and a frozen dataclass costs four times as much to create.
@dataclass(slots=True)
class Profile:
    """A valid row: the Braze identity, email and typed custom attributes (blanks left out)."""

    customer_id: str
    email: str
    attributes: dict[str, Any]


RecordValidator = Callable[[dict[str, Any]], Profile | list[Problem]]


def record_validator(mapping: Mapping) -> RecordValidator:
    """`validate_record` for one mapping, made once per partition: it runs for every row of a
    segment.

    A row whose values all have the common valid shape (text ids and emails of the plain form,
    short strings, unsigned integers, known booleans, valid dates) is converted on a
    path that only accepts what the full checks accept and converts it the same way; any other
    row takes the full checks, which name every problem.
    """
    id_column, email_column = mapping.customer_id, mapping.email
    fields = [(f.column, f.attribute, _QUICK[f.type]) for f in mapping.attributes]
    plain_email, not_quick = _PLAIN_EMAIL.fullmatch, _NOT_QUICK

    def validate(values: dict[str, Any]) -> Profile | list[Problem]:
        customer_id, email = values.get(id_column), values.get(email_column)
        if type(customer_id) is str and type(email) is str:
            customer_id, email = customer_id.strip(), email.strip()
            if (
                customer_id
                and len(customer_id) <= _QUICK_ID_CHARS
                and len(email) <= MAX_EMAIL_CHARS
                and plain_email(email)
                and email.index("@") <= 64
            ):
                attributes: dict[str, Any] = {}
                for column, attribute, convert in fields:
                    value = values.get(column)
                    if value is None:
                        continue
                    if type(value) is not str:
                        break
                    if not value or value.isspace():
                        continue
                    converted = convert(value)
                    if converted is not_quick:
                        break
                    attributes[attribute] = converted
                else:
                    return Profile(customer_id, email, attributes)
        return validate_record(values, mapping)

    return validate


def validate_record(values: dict[str, Any], mapping: Mapping) -> Profile | list[Problem]:
    """Return the profile, or the list of reasons the row cannot be sent."""
    problems: list[Problem] = []
    id_column, email_column = mapping.customer_id, mapping.email
    customer_id = _customer_id(values.get(id_column), id_column, problems, id_column in values)
    email = _email(values.get(email_column), email_column, problems, email_column in values)
    attributes: dict[str, Any] = {}
    for field in mapping.attributes:
        value = _attribute(values.get(field.column), field, problems)
        if value is not None:
            attributes[field.attribute] = value
    if problems:
        return problems
    assert customer_id is not None and email is not None
    return Profile(customer_id, email, attributes)


def usable_customer_id(values: dict[str, Any], mapping: Mapping) -> str | None:
    """The row's customer id when the id itself is valid, though another field may not be.

    A profile whose row is rejected for, say, its email is still in the segment: the diff must
    not take it for one that left.
    """
    return _customer_id(values.get(mapping.customer_id), mapping.customer_id, [])


def _text(value: Any) -> str | None:
    """A trimmed string, or None when blank; JSON numbers count as text for identifiers."""
    if value is None:
        return None
    if isinstance(value, str):
        stripped = value.strip()
        return stripped or None
    return None


def _blank(column: str, present: bool) -> str:
    """Why an identifier is blank: a JSON Lines record may lack the key (a key spelt in another
    case is another key), where "blank" would point at its value."""
    return "is blank" if present else f"is missing: the record has no '{column}' key"


def _customer_id(
    value: Any, column: str, problems: list[Problem], present: bool = True
) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    elif value is not None and not isinstance(value, str):
        problems.append(
            Problem(
                "customer_id_type",
                f"customer id (column '{column}') must be text, got {kind_of(value)}",
            )
        )
        return None
    text = _text(value)
    if text is None:
        blank = _blank(column, present)
        problems.append(Problem("customer_id_blank", f"customer id (column '{column}') {blank}"))
        return None
    size = len(text.encode("utf-8"))
    if size > MAX_EXTERNAL_ID_BYTES:
        problems.append(
            Problem(
                "customer_id_too_long",
                f"customer id (column '{column}') is {size} bytes; Braze allows at most "
                f"{MAX_EXTERNAL_ID_BYTES}",
            )
        )
        return None
    return text


def _email(value: Any, column: str, problems: list[Problem], present: bool) -> str | None:
    if value is not None and not isinstance(value, str):
        problems.append(
            Problem("email_type", f"email (column '{column}') must be text, got {kind_of(value)}")
        )
        return None
    text = _text(value)
    if text is None:
        problems.append(
            Problem("email_blank", f"email (column '{column}') {_blank(column, present)}")
        )
        return None
    reason = email_problem(text)
    if reason:
        problems.append(
            Problem("email_invalid", f"email (column '{column}') {reason}: {_preview(text)}")
        )
        return None
    return text


def email_problem(address: str) -> str | None:
    """Why Braze would refuse this address (syntax only), or None when it looks valid."""
    if (
        len(address) <= MAX_EMAIL_CHARS
        and _PLAIN_EMAIL.fullmatch(address)
        and address.index("@") <= 64
    ):
        return None
    if _WHITESPACE.search(address):
        return "contains whitespace"
    if len(address) > MAX_EMAIL_CHARS:
        return f"is longer than {MAX_EMAIL_CHARS} characters"
    if address.count("@") != 1:
        return "must contain exactly one @"
    local, domain = address.split("@")
    if not local or len(local) > 64:
        return "has an empty or over-long part before the @"
    if not local.isascii():
        return "has non-ASCII characters before the @"
    if not _LOCAL_PART.match(local):
        return "has characters or dots before the @ that are not allowed"
    if not domain.isascii():
        return "has a non-ASCII domain; Braze needs it in Punycode (xn--...)"
    labels = domain.split(".")
    if len(labels) < 2 or not all(_DOMAIN_LABEL.match(label) for label in labels):
        return "has an invalid domain"
    if labels[-1].isdigit():
        return "has a numeric top-level domain"
    return None


def _attribute(value: Any, field: AttributeMapping, problems: list[Problem]) -> Any:
    if type(value) is str:
        if not value or value.isspace():  # blank: not sent
            return None
    elif value is None:
        return None
    if isinstance(value, dict | list):
        problems.append(
            Problem(
                "attribute_type", f"{_where(field)} must be a single value, got {kind_of(value)}"
            )
        )
        return None
    converted, reason = _CONVERTERS[field.type](value)
    if reason:
        code = (
            "attribute_too_long" if isinstance(reason, _TooLong) else f"attribute_not_{field.type}"
        )
        problems.append(Problem(code, f"{_where(field)} {reason}"))
        return None
    return converted


def _where(field: AttributeMapping) -> str:
    return f"'{field.attribute}' (column '{field.column}')"


class _TooLong(str):
    """A reason that means "over Braze's length limit" rather than "wrong type"."""


def _as_string(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, str):
        return None, f"must be text, got {kind_of(value)}"
    text = value.strip()
    if len(text) > MAX_STRING_CHARS:
        return None, _TooLong(f"is {len(text)} characters; Braze allows at most {MAX_STRING_CHARS}")
    return text, None


def _as_number(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, bool):
        return None, "must be a number, got a boolean"
    if isinstance(value, int):
        return value, None
    if isinstance(value, float):
        return (value, None) if math.isfinite(value) else (None, "must be a finite number")
    text = value.strip()
    if (text.isdigit() and text.isascii()) or _INTEGER.match(text):  # the first test is cheaper
        try:
            return int(text), None
        except ValueError:  # past Python's 4,300-digit limit for reading an integer
            return None, f"is a number too long to send ({len(text)} digits): {_preview(text)}"
    if text.lower().lstrip("+-") in {"nan", "inf", "infinity"}:
        return None, f"is not a finite number: {_preview(text)}"
    if not _DECIMAL.match(text):
        return None, f"is not a number: {_preview(text)}"
    number = float(text)
    if not math.isfinite(number):
        return None, f"is not a finite number: {_preview(text)}"
    return number, None


def _as_boolean(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, bool):
        return value, None
    text = str(value).strip().lower()
    if text in _TRUE:
        return True, None
    if text in _FALSE:
        return False, None
    return None, f"is not a boolean (true/false/1/0): {_preview(str(value))}"


# Dates repeat across a segment (birthdays, sign-up days): a text once found valid is not parsed
# again. Emptied when full, so its memory stays bounded (about 2 MB).
_valid_dates: set[str] = set()
CACHED_DATES = 16_384


def _as_date(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, str):
        return None, f"must be an ISO 8601 date as text, got {kind_of(value)}"
    text = value.strip()
    if text in _valid_dates:
        return text, None
    try:
        if not _ISO_DATE.match(text):
            raise ValueError
        if len(text) == 10:
            date.fromisoformat(text)
        else:
            datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return (
            None,
            f"is not an ISO 8601 date (YYYY-MM-DD or YYYY-MM-DDThh:mm:ssZ): {_preview(text)}",
        )
    if len(_valid_dates) >= CACHED_DATES:
        _valid_dates.clear()
    _valid_dates.add(text)
    return text, None


_CONVERTERS = {
    "string": _as_string,
    "number": _as_number,
    "boolean": _as_boolean,
    "date": _as_date,
}

# The quick path's converters: a non-blank string in, the value the full converter makes out,
# or `_NOT_QUICK` when the full converter must decide (and maybe name a problem).
_NOT_QUICK = object()
_QUICK_ID_CHARS = MAX_EXTERNAL_ID_BYTES // 4  # no longer in UTF-8 than Braze allows


def _quick_string(value: str) -> Any:
    text = value.strip()
    return text if len(text) <= MAX_STRING_CHARS else _NOT_QUICK


def _quick_number(value: str) -> Any:
    text = value.strip()
    if text.isdigit() and text.isascii() and len(text) <= 18:  # far below int()'s digit limit
        return int(text)
    return _NOT_QUICK


def _quick_boolean(value: str) -> Any:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    return False if text in _FALSE else _NOT_QUICK


def _quick_date(value: str) -> Any:
    text, reason = _as_date(value)  # a date not seen before is parsed here, then remembered
    return _NOT_QUICK if reason else text


_QUICK = {
    "string": _quick_string,
    "number": _quick_number,
    "boolean": _quick_boolean,
    "date": _quick_date,
}


def _preview(text: str, limit: int = 60) -> str:
    """Quote a value for an error message without copying a huge field into it."""
    return repr(text if len(text) <= limit else text[:limit] + "…")
