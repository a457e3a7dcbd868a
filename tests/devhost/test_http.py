"""HTTP triggers over a real socket: routing, the request the function sees, the response sent."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import pytest
import requests
from devhost_testkit import Azurite, RecordingApp, host_env, queue_client, wait_until

from devhost import LocalHost

HTTP_FUNCTIONS = """

@bp.route(route="exports/{name:alpha}/runs/{run:int?}", methods=["POST", "PUT"])
def start_run(req: func.HttpRequest) -> func.HttpResponse:
    seen = {
        "method": req.method,
        "url": req.url,
        "route": dict(req.route_params),
        "params": dict(req.params),
        "headers": dict(req.headers),
        "body": req.get_json(),
    }
    response = func.HttpResponse(
        json.dumps(seen), status_code=201, mimetype="application/json", headers={"X-Run": "1"}
    )
    response.headers.add("Set-Cookie", "first=1; Path=/")
    response.headers.add("Set-Cookie", "second=2")
    response.headers.add("X-Repeated", "a")
    response.headers.add("X-Repeated", "b")
    return response


@bp.route(route="exports/{name}", methods=["GET"])
def describe_export(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        "déjà " + req.route_params["name"], status_code=299, mimetype="text/html", charset="latin-1"
    )


@bp.route(route="boom", auth_level=func.AuthLevel.ANONYMOUS)
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("exploding on purpose")


@bp.route(route="hello")
async def hello(req: func.HttpRequest) -> str:
    return "hello " + req.params.get("who", "nobody")


@bp.route(route="silent")
def silent(req: func.HttpRequest) -> None:
    return None


@bp.route(route="jobs", methods=["POST"])
@bp.queue_output(arg_name="jobs", queue_name="%JOBS_QUEUE%", connection="AzureWebJobsStorage")
def enqueue_job(req: func.HttpRequest, jobs: func.Out[str]) -> func.HttpResponse:
    jobs.set(req.get_body().decode())
    return func.HttpResponse(status_code=202)
"""

SERVED = ["start_run", "describe_export", "boom", "hello", "silent", "enqueue_job"]


@pytest.fixture
def http_host(
    azurite: Azurite, make_app: Callable[..., RecordingApp], queue_name: Callable[[str], str]
) -> Iterator[tuple[LocalHost, str]]:
    """A host serving the HTTP functions above; yields it with its jobs queue."""
    app = make_app(extra_functions=HTTP_FUNCTIONS)
    jobs_queue = queue_name("jobs")
    env = host_env(azurite, app, queue_name("idle"), JOBS_QUEUE=jobs_queue)
    with LocalHost(app.app_dir, env=env, functions=SERVED) as host:
        yield host, jobs_queue


def test_listing_shows_methods_and_routes_with_the_prefix(
    http_host: tuple[LocalHost, str],
) -> None:
    host, _ = http_host
    listing = {function.name: function.describe() for function in host.functions}

    assert listing["start_run"] == (
        "start_run: httpTrigger (POST,PUT /api/exports/{name:alpha}/runs/{run:int?})"
    )
    assert listing["hello"] == "hello: httpTrigger (* /api/hello)"


def test_the_function_sees_route_values_query_headers_and_body(
    http_host: tuple[LocalHost, str],
) -> None:
    host, _ = http_host

    response = requests.post(
        f"{host.http_url}/api/exports/weekly/runs/42?dry=1&tag=a&tag=b",
        json={"segment": "vip"},
        headers={"X-Trace": "t-1"},
        timeout=30,
    )

    assert response.status_code == 201
    seen = response.json()
    assert seen["method"] == "POST"
    assert seen["url"] == f"{host.http_url}/api/exports/weekly/runs/42?dry=1&tag=a&tag=b"
    assert seen["route"] == {"name": "weekly", "run": "42"}
    assert seen["params"] == {"dry": "1", "tag": "a,b"}, "repeated values joined like the host"
    assert seen["headers"]["x-trace"] == "t-1"
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["body"] == {"segment": "vip"}


def test_optional_route_values_may_be_left_out(http_host: tuple[LocalHost, str]) -> None:
    host, _ = http_host

    response = requests.put(f"{host.http_url}/api/exports/weekly/runs", json={}, timeout=30)

    assert response.status_code == 201
    assert response.json()["route"] == {"name": "weekly"}


def test_the_response_keeps_status_headers_cookies_and_charset(
    http_host: tuple[LocalHost, str],
) -> None:
    host, _ = http_host

    created = requests.post(f"{host.http_url}/api/exports/weekly/runs", json={}, timeout=30)
    described = requests.get(f"{host.http_url}/api/exports/weekly", timeout=30)

    assert created.headers["Content-Type"] == "application/json"
    assert created.headers["X-Run"] == "1"
    assert created.raw.headers.getlist("Set-Cookie") == ["first=1; Path=/", "second=2"]
    # The worker sends headers as a map: of a repeated header only the last value arrives.
    assert created.headers["X-Repeated"] == "b"
    assert described.status_code == 299
    assert described.headers["Content-Type"] == "text/html; charset=latin-1"
    assert described.content == "déjà weekly".encode("latin-1")


def test_constraints_methods_and_unknown_routes_give_404(
    http_host: tuple[LocalHost, str], caplog: pytest.LogCaptureFixture
) -> None:
    host, _ = http_host
    caplog.set_level(logging.INFO, logger="devhost.web")

    not_alpha = requests.post(f"{host.http_url}/api/exports/week1/runs", json={}, timeout=30)
    wrong_method = requests.delete(f"{host.http_url}/api/exports/weekly/runs", timeout=30)
    unknown = requests.get(f"{host.http_url}/api/nothing-here", timeout=30)
    no_prefix = requests.get(f"{host.http_url}/hello", timeout=30)

    assert [not_alpha.status_code, unknown.status_code, no_prefix.status_code] == [404] * 3
    # The host answers 404, not 405, for a known route with another method (host#10098).
    assert wrong_method.status_code == 404
    assert "matches the route of 'start_run' but not its methods" in caplog.text


def test_an_exception_gives_500_and_the_traceback_is_logged(
    http_host: tuple[LocalHost, str], caplog: pytest.LogCaptureFixture
) -> None:
    host, _ = http_host

    response = requests.get(f"{host.http_url}/api/boom", timeout=30)

    assert response.status_code == 500
    assert response.content == b""
    assert "Executed 'Functions.boom' (Failed" in caplog.text
    assert "RuntimeError: exploding on purpose" in caplog.text


def test_async_functions_strings_and_empty_returns(http_host: tuple[LocalHost, str]) -> None:
    host, _ = http_host

    hello = requests.get(f"{host.http_url}/api/hello?who=devhost", timeout=30)
    silent = requests.get(f"{host.http_url}/api/silent", timeout=30)

    assert hello.status_code == 200
    assert hello.text == "hello devhost"
    assert hello.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert silent.status_code == 200
    assert silent.content == b""


def test_queue_outputs_of_http_functions_are_written(
    azurite: Azurite, http_host: tuple[LocalHost, str]
) -> None:
    host, jobs_queue = http_host

    response = requests.post(f"{host.http_url}/api/jobs", data="job-1", timeout=30)

    assert response.status_code == 202
    message = wait_until(
        lambda: queue_client(azurite, jobs_queue).receive_message(), "the job was queued"
    )
    assert message.content == "job-1"


def test_route_prefix_comes_from_host_json(
    azurite: Azurite, make_app: Callable[..., RecordingApp], queue_name: Callable[[str], str]
) -> None:
    app = make_app(extra_functions=HTTP_FUNCTIONS)
    host_json = json.loads((app.app_dir / "host.json").read_text())
    host_json["extensions"]["http"] = {"routePrefix": ""}
    (app.app_dir / "host.json").write_text(json.dumps(host_json))
    env = host_env(azurite, app, queue_name("idle"))

    with LocalHost(app.app_dir, env=env, functions=["hello"]) as host:
        response = requests.get(f"{host.http_url}/hello", timeout=30)

    assert response.text == "hello nobody"


def test_auth_levels_are_not_enforced_and_the_log_says_so(
    azurite: Azurite,
    make_app: Callable[..., RecordingApp],
    queue_name: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="devhost.web")
    app = make_app(extra_functions=HTTP_FUNCTIONS)
    env = host_env(azurite, app, queue_name("idle"))

    with LocalHost(app.app_dir, env=env, functions=["hello", "boom"]) as host:
        # `hello` has the app's FUNCTION level, yet no key is needed, as under Core Tools.
        assert requests.get(f"{host.http_url}/api/hello", timeout=30).status_code == 200

    assert caplog.text.count("HTTP auth levels are not enforced locally") == 1
