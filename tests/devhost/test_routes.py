"""HTTP trigger route templates, matched as ASP.NET Core routing matches them."""

from __future__ import annotations

import pytest

from devhost.routes import RouteError, parse_route


def test_literals_ignore_case_and_parameters_are_decoded() -> None:
    route = parse_route("api", "exports/{name}/runs")

    assert route.template == "api/exports/{name}/runs"
    assert route.match("/API/Exports/a%20b/runs") == {"name": "a b"}
    assert route.match("/api/exports/x/runs/") == {"name": "x"}
    assert route.match("/api/exports/x") is None
    assert route.match("/api/exports/a%2Fb/runs") == {"name": "a%2Fb"}, "as Kestrel leaves it"


def test_constraints_that_fail_mean_no_match() -> None:
    route = parse_route("api", "items/{id:int}/{code:alpha:maxlength(3)}")

    assert route.match("/api/items/-5/abc") == {"id": "-5", "code": "abc"}
    assert route.match("/api/items/five/abc") is None
    assert route.match("/api/items/5/abcd") is None
    assert route.match("/api/items/99999999999/abc") is None, "beyond a 32-bit int"


@pytest.mark.parametrize(
    ("constraint", "good", "bad"),
    [
        ("bool", "True", "yes"),
        ("guid", "0f8fad5b-d9cb-469f-a165-70867728950e", "0f8fad5b"),
        ("long", "99999999999", "1.5"),
        ("double", "1.5", "one"),
        ("min(10)", "10", "9"),
        ("range(1,3)", "3", "4"),
        ("length(2)", "ab", "abc"),
        ("regex(^[a-z]{{2}}\\d$)", "ab1", "abc"),
    ],
)
def test_inline_constraints(constraint: str, good: str, bad: str) -> None:
    route = parse_route("", f"v/{{value:{constraint}}}")

    assert route.match(f"/v/{good}") == {"value": good}
    assert route.match(f"/v/{bad}") is None


def test_optional_parameters_defaults_and_catch_all() -> None:
    optional = parse_route("api", "runs/{id:int?}")
    assert optional.match("/api/runs") == {}
    assert optional.match("/api/runs/7") == {"id": "7"}

    defaulted = parse_route("api", "pages/{page=1}")
    assert defaulted.match("/api/pages") == {"page": "1"}

    catch_all = parse_route("", "files/{*path}")
    assert catch_all.match("/files/a/b.txt") == {"path": "a/b.txt"}
    assert catch_all.match("/files") == {}


def test_complex_segments_capture_greedily_like_the_host() -> None:
    route = parse_route("api", "files/{name}.{ext}")

    assert route.match("/api/files/report.final.csv") == {"name": "report.final", "ext": "csv"}


def test_empty_prefix_and_route() -> None:
    assert parse_route("", "ping").match("/ping") == {}
    assert parse_route("", "").match("/") == {}


def test_precedence_prefers_literals_then_constrained_parameters() -> None:
    literal = parse_route("api", "items/new")
    constrained = parse_route("api", "items/{id:int}")
    free = parse_route("api", "items/{name}")

    ordered = sorted([free, constrained, literal], key=lambda route: route.precedence)

    assert ordered == [literal, constrained, free]


@pytest.mark.parametrize(
    "template",
    [
        "a/{id?}/b",  # optional parameters only at the end
        "{*rest}/more",
        "{a}{b}",
        "x/{unknown:nosuch}",
        "x/{id",
        "x/{a}/{A}",
        "x//y",
    ],
)
def test_templates_the_host_refuses(template: str) -> None:
    with pytest.raises(RouteError):
        parse_route("api", template)
