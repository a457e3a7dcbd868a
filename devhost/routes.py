"""HTTP trigger routes as the host's ASP.NET Core routing reads them.

A route is `/<routePrefix>/<route>`; a template has literal segments (matched ignoring case),
`{param}` segments with optional constraints (`{id:int}`, `{name:alpha:maxlength(8)}`),
optional parameters (`{id?}`) and defaults (`{page=1}`) at the end, complex segments
(`{name}.{ext}`) and a final catch-all (`{*rest}`). A constraint that does not hold means the
route does not match, so the request gets a 404, as from the host. When several routes match,
ASP.NET's precedence picks one: literals before constrained parameters before parameters
before catch-alls, segment by segment.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONSTRAINT = re.compile(r"^(?P<name>[A-Za-z]+)(?:\((?P<arguments>.*)\))?$", re.DOTALL)
_INTEGER = re.compile(r"^[+-]?\d+$")
_ENCODED_SLASH = re.compile("%2F", re.IGNORECASE)


class RouteError(Exception):
    """A route template the host would refuse."""


Constraint = Callable[[str], bool]


@dataclass(frozen=True)
class RouteParameter:
    name: str
    constraints: tuple[Constraint, ...] = ()
    optional: bool = False
    default: str | None = None
    catch_all: bool = False

    def accepts(self, value: str) -> bool:
        return all(constraint(value) for constraint in self.constraints)


@dataclass(frozen=True)
class RouteTemplate:
    """A parsed route (prefix included) that matches request paths."""

    template: str
    parameters: tuple[RouteParameter, ...]
    precedence: tuple[int, ...]
    _pattern: re.Pattern[str]

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Route values for a raw (still percent-encoded) request path, or None."""
        if len(raw_path) > 1:
            raw_path = raw_path.removesuffix("/")
        found = self._pattern.match(raw_path)
        if found is None:
            return None
        values: dict[str, str] = {}
        for index, parameter in enumerate(self.parameters):
            raw = found.group(f"p{index}")
            if raw is None:
                if parameter.default is not None:
                    values[parameter.name] = parameter.default
                continue
            value = _decode_segment(raw)
            if not parameter.accepts(value):
                return None
            values[parameter.name] = value
        return values


def parse_route(prefix: str, route: str) -> RouteTemplate:
    """The route `/<prefix>/<route>`; both parts are trimmed of slashes, either may be empty."""
    parts = [part for part in (prefix.strip("/"), route.strip("/")) if part]
    template = "/".join(parts)
    segments = template.split("/") if template else []
    if any(not segment for segment in segments):
        raise RouteError(f"route '{template}' has an empty segment")

    parameters: list[RouteParameter] = []
    precedence: list[int] = []
    pattern = ""
    seen_optional = False
    for position, segment in enumerate(segments):
        pieces = _segment_pieces(template, segment)
        segment_parameters = [piece for piece in pieces if isinstance(piece, RouteParameter)]
        lone = pieces[0] if len(pieces) == 1 else None
        optional = isinstance(lone, RouteParameter) and (lone.optional or lone.catch_all)
        if any(p.catch_all for p in segment_parameters) and position < len(segments) - 1:
            raise RouteError(f"route '{template}': a catch-all parameter must be the last segment")
        if not optional and any(p.optional or p.catch_all for p in segment_parameters):
            raise RouteError(
                f"route '{template}': devhost supports optional and catch-all parameters only "
                "as whole segments"
            )
        if seen_optional and not optional:
            raise RouteError(f"route '{template}': optional parameters must be at the end")
        seen_optional = seen_optional or optional
        pattern += _segment_pattern(pieces, len(parameters), optional)
        parameters.extend(segment_parameters)
        precedence.append(_segment_precedence(pieces))

    names = [parameter.name.casefold() for parameter in parameters]
    if len(set(names)) != len(names):
        raise RouteError(f"route '{template}' uses a parameter name twice")
    compiled = re.compile(f"^{pattern}/?$" if pattern else "^/?$", re.IGNORECASE | re.DOTALL)
    return RouteTemplate(template, tuple(parameters), tuple(precedence), compiled)


def _segment_pieces(template: str, segment: str) -> list[str | RouteParameter]:
    """A segment as literal text and parameters; `{{` and `}}` are literal braces."""
    pieces: list[str | RouteParameter] = []
    literal = ""
    index = 0
    while index < len(segment):
        char = segment[index]
        if segment.startswith(("{{", "}}"), index):
            literal += char
            index += 2
        elif char == "{":
            end = _closing_brace(segment, index)
            if end < 0:
                raise RouteError(f"route '{template}' has an unclosed '{{'")
            if literal:
                pieces.append(literal)
                literal = ""
            pieces.append(_parameter(template, _unescape(segment[index + 1 : end])))
            index = end + 1
        elif char == "}":
            raise RouteError(f"route '{template}' has an unmatched '}}'")
        else:
            literal += char
            index += 1
    if literal:
        pieces.append(literal)
    if any(
        isinstance(a, RouteParameter) and isinstance(b, RouteParameter)
        for a, b in itertools.pairwise(pieces)
    ):
        raise RouteError(f"route '{template}': two parameters need literal text between them")
    return pieces


def _unescape(text: str) -> str:
    return text.replace("{{", "{").replace("}}", "}")


def _closing_brace(segment: str, start: int) -> int:
    index = start + 1
    while index < len(segment):
        if segment.startswith("}}", index):
            index += 2
        elif segment[index] == "}":
            return index
        else:
            index += 1
    return -1


def _parameter(template: str, text: str) -> RouteParameter:
    """`name`, `*name`, `name?`, `name=default`, `name:constraint(args):constraint...`."""
    catch_all = text.startswith("*")
    text = text.lstrip("*")
    optional = text.endswith("?")
    text = text.removesuffix("?")
    text, default = _split_default(text)
    name, _, constraint_text = text.partition(":")
    if not _NAME.match(name):
        raise RouteError(f"route '{template}' has an invalid parameter name '{name}'")
    constraints = tuple(
        _constraint(template, entry) for entry in _split_constraints(constraint_text) if entry
    )
    if optional and default is not None:
        raise RouteError(f"route '{template}': '{name}' cannot be optional and have a default")
    return RouteParameter(name, constraints, optional or default is not None, default, catch_all)


def _split_default(text: str) -> tuple[str, str | None]:
    """`name:constraint=default` into its parts; an '=' inside `regex(...)` is not a default."""
    depth = 0
    for index, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if char == "=" and depth == 0:
            return text[:index], text[index + 1 :]
    return text, None


def _split_constraints(text: str) -> list[str]:
    """Split on ':' outside parentheses, so `regex(^a:b$)` stays whole."""
    entries, current, depth = [], "", 0
    for char in text:
        if char == ":" and depth == 0:
            entries.append(current)
            current = ""
            continue
        depth += (char == "(") - (char == ")")
        current += char
    entries.append(current)
    return entries


def _constraint(template: str, entry: str) -> Constraint:
    """The inline constraints of ASP.NET Core routing."""
    found = _CONSTRAINT.match(entry)
    if not found:
        raise RouteError(f"route '{template}' has an invalid constraint '{entry}'")
    name = found["name"].casefold()
    arguments = found["arguments"]
    try:
        numbers = [int(a) for a in arguments.split(",")] if arguments and name != "regex" else []
    except ValueError:
        raise RouteError(f"route '{template}' has an invalid constraint '{entry}'") from None
    simple: dict[str, Constraint] = {
        "int": lambda value: _integer_in(value, *INT32),
        "long": lambda value: _integer_in(value, *INT64),
        "bool": lambda value: value.casefold() in ("true", "false"),
        "alpha": lambda value: value.isascii() and value.isalpha(),
        "guid": _is_guid,
        "float": _is_number,
        "double": _is_number,
        "decimal": _is_number,
        "datetime": _is_datetime,
        "required": bool,
    }
    if name in simple and arguments is None:
        return simple[name]
    if name == "min" and len(numbers) == 1:
        return lambda value: _integer_in(value, numbers[0], INT64[1])
    if name == "max" and len(numbers) == 1:
        return lambda value: _integer_in(value, INT64[0], numbers[0])
    if name == "range" and len(numbers) == 2:
        return lambda value: _integer_in(value, numbers[0], numbers[1])
    if name == "minlength" and len(numbers) == 1:
        return lambda value: len(value) >= numbers[0]
    if name == "maxlength" and len(numbers) == 1:
        return lambda value: len(value) <= numbers[0]
    if name == "length" and len(numbers) in (1, 2):
        low, high = numbers[0], numbers[-1]
        return lambda value: low <= len(value) <= high
    if name == "regex" and arguments:
        expression = re.compile(arguments, re.IGNORECASE)
        return lambda value: expression.search(value) is not None
    raise RouteError(f"route '{template}' has an unknown constraint '{entry}'")


def _segment_pattern(pieces: list[str | RouteParameter], first_index: int, optional: bool) -> str:
    """The regex for '/segment'; an optional segment may be left out with its slash."""
    body = ""
    index = first_index
    for piece in pieces:
        if isinstance(piece, str):
            body += re.escape(piece)
            continue
        capture = ".+" if piece.catch_all else "[^/]+"
        body += f"(?P<p{index}>{capture})"
        index += 1
    return f"(?:/{body})?" if optional else f"/{body}"


def _segment_precedence(pieces: list[str | RouteParameter]) -> int:
    """ASP.NET's inbound precedence digit: lower wins."""
    if len(pieces) > 1:
        return 2
    piece = pieces[0]
    if isinstance(piece, str):
        return 1
    if piece.catch_all:
        return 5
    return 3 if piece.constraints else 4


def _decode_segment(raw: str) -> str:
    """Percent-decode like Kestrel does the request path: everything except an encoded '/'."""
    return unquote(_ENCODED_SLASH.sub(lambda found: "%25" + found.group(0)[1:], raw))


def _integer_in(value: str, low: int, high: int) -> bool:
    return bool(_INTEGER.match(value)) and low <= int(value) <= high


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True
