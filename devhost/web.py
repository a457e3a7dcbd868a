"""Core Tools' HTTP front on one port: HTTP triggers, admin invoke and the blobs webhook.

HTTP functions run like every other function, on the worker's thread pool (or its event loop
for `async def`), while aiohttp serves connections on its own loop. Requests and responses go
through the `azure.functions` converters the Python worker uses, so the function receives the
worker's `HttpRequest` (headers lower-cased, repeated headers and query values joined with
',') and its `HttpResponse` is sent as the host sends it: only the last value of a repeated
header survives, except `Set-Cookie`, which travels as cookies. A function that raises gives
an empty 500; a route that matches but not the method gives a 404, as the host answers
(Azure/azure-functions-host#10098). Auth levels are not enforced, as under Core Tools.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from aiohttp import web
from azure.functions.http import HttpRequestConverter, HttpResponseConverter
from azure.functions.meta import Datum
from multidict import CIMultiDict

from devhost.execution import FunctionRunner
from devhost.indexing import FunctionInfo
from devhost.invocation import (
    RETURN_BINDING,
    FunctionLoadError,
    FunctionNotServed,
    HostedFunction,
    annotation_mismatch,
    is_subclass,
    prepare_outputs,
    trigger_annotation,
)
from devhost.routes import RouteError, RouteTemplate, parse_route

HOST = "127.0.0.1"
MAX_REQUEST_BODY = 100 * 1024 * 1024  # the host's default FUNCTIONS_REQUEST_BODY_SIZE_LIMIT
ADMIN_PREFIX = "/admin/functions/"
BLOBS_WEBHOOK = "/runtime/webhooks/blobs"
HTTP_REASON = "This function was programmatically called via the host APIs."
_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive"}
_HOST_THREADS = 64

logger = logging.getLogger(__name__)

DirectInvoker = Callable[[str | None], None]
EventSink = Callable[[str, Sequence[Mapping[str, Any]]], None]


@dataclass(frozen=True)
class HttpFunction(HostedFunction):
    """An HTTP-triggered function ready to be served."""

    route: RouteTemplate
    methods: frozenset[str]
    auth_level: str

    def describe_route(self) -> str:
        methods = ",".join(sorted(self.methods)) or "*"
        return f"{methods} /{self.route.template}"


def prepare_http_function(
    info: FunctionInfo, route_prefix: str, settings: Mapping[str, str]
) -> HttpFunction:
    """Check an HTTP-triggered function and parse its route like the host would."""
    outputs = prepare_outputs(info, settings, handled=frozenset({"http"}))
    http_outputs = [b["name"] for b in info.bindings if b["type"] == "http"]
    if http_outputs not in ([], [RETURN_BINDING]):
        raise FunctionNotServed(f"http output bindings other than $return: {http_outputs}")
    annotation = trigger_annotation(info, [*http_outputs, *(o.arg_name for o in outputs)])
    if annotation is not None and not is_subclass(annotation, func.HttpRequest):
        raise annotation_mismatch(info, annotation)
    try:
        route = parse_route(route_prefix, str(info.trigger.get("route") or info.name))
    except RouteError as error:
        raise FunctionLoadError(info.name, str(error)) from None
    return HttpFunction(
        name=info.name,
        trigger_arg=str(info.trigger["name"]),
        outputs=outputs,
        user_function=info.user_function,
        route=route,
        methods=frozenset(str(method).upper() for method in info.trigger.get("methods") or ()),
        auth_level=str(info.trigger.get("authLevel", "function")),
    )


class WebHost:
    """The HTTP listener, on its own event-loop thread; invocations run on the worker."""

    def __init__(
        self,
        *,
        port: int,
        functions: Sequence[HttpFunction],
        runner: FunctionRunner,
        direct_invokers: Mapping[str, DirectInvoker],
        blob_events: EventSink | None,
    ) -> None:
        self._port = port
        # Most specific first, so the first route that matches wins (ASP.NET precedence).
        self._functions = sorted(functions, key=lambda function: function.route.precedence)
        self._runner = runner
        self._direct = {name.casefold(): invoke for name, invoke in direct_invokers.items()}
        self._blob_events = blob_events
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="devhost-http", daemon=True
        )
        self._host_threads = ThreadPoolExecutor(_HOST_THREADS, thread_name_prefix="devhost-http")
        self._runner_handle: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._in_flight = 0
        self._in_flight_changed = threading.Condition()
        self.url = ""

    def start(self) -> None:
        """Listen on 127.0.0.1:port (0 picks a free port); raise OSError if it is taken."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # As asyncio's own servers do: a restarted devhost can take the port back at once.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((HOST, self._port))
        except OSError:
            listener.close()
            raise
        self.url = f"http://{HOST}:{listener.getsockname()[1]}"
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(listener), self._loop).result()
        if any(function.auth_level.casefold() != "anonymous" for function in self._functions):
            logger.info(
                "HTTP auth levels are not enforced locally, as under Core Tools: function and "
                "admin keys are not checked"
            )

    def stop_receiving(self) -> None:
        """Stop accepting connections; requests already in progress complete."""
        if self._site is not None:
            asyncio.run_coroutine_threadsafe(self._site.stop(), self._loop).result()

    def wait_drained(self, deadline: float) -> bool:
        """Wait for in-flight HTTP and admin invocations, then close the server."""
        with self._in_flight_changed:
            drained = self._in_flight_changed.wait_for(
                lambda: self._in_flight == 0, max(0.0, deadline - time.monotonic())
            )
        self.close()
        return drained

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        if self._runner_handle is not None:
            cleanup = asyncio.run_coroutine_threadsafe(self._runner_handle.cleanup(), self._loop)
            cleanup.result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._host_threads.shutdown(wait=False, cancel_futures=True)

    async def _serve(self, listener: socket.socket) -> None:
        app = web.Application(client_max_size=MAX_REQUEST_BODY)
        app.router.add_route("*", "/{path:.*}", self._dispatch)
        self._runner_handle = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner_handle.setup()
        self._site = web.SockSite(self._runner_handle, listener)
        await self._site.start()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        folded = raw_path.casefold()
        if request.method == "POST" and folded.startswith(ADMIN_PREFIX):
            return await self._admin_invoke(request, raw_path[len(ADMIN_PREFIX) :])
        if folded == BLOBS_WEBHOOK and self._blob_events is not None:
            return await self._blobs_webhook(request)
        return await self._invoke_http_function(request, raw_path)

    async def _invoke_http_function(self, request: web.Request, raw_path: str) -> web.Response:
        matches = [
            (function, values)
            for function in self._functions
            if (values := function.route.match(raw_path)) is not None
        ]
        allowed = [(f, v) for f, v in matches if not f.methods or request.method in f.methods]
        if not allowed:
            if matches:
                logger.info(
                    "%s %s matches the route of '%s' but not its methods; the host answers 404",
                    request.method,
                    raw_path,
                    matches[0][0].name,
                )
            return web.Response(status=404)
        function, values = allowed[0]
        body = await request.read()
        return await self._in_host_thread(lambda: self._run_http(function, request, values, body))

    def _run_http(
        self,
        function: HttpFunction,
        request: web.Request,
        route_values: Mapping[str, str],
        body: bytes,
    ) -> web.Response:
        execution = self._runner.run(
            function, lambda: _http_request(request, route_values, body), HTTP_REASON
        )
        if not execution.succeeded:
            return web.Response(status=500)
        result = execution.values.get(RETURN_BINDING)
        try:
            return _http_response(result)
        except NotImplementedError:
            logger.error(
                "Function '%s' returned %s, which the http output binding cannot send",
                function.name,
                type(result).__name__,
            )
            return web.Response(status=500)

    async def _admin_invoke(self, request: web.Request, name: str) -> web.Response:
        """Core Tools' `POST /admin/functions/<name>` with `{"input": ...}`: run once, 202."""
        try:
            invocation = await request.json()
        except ValueError:
            invocation = None
        if not isinstance(invocation, dict):
            return web.Response(status=400)
        invoke = self._direct.get(name.casefold())
        if invoke is None and any(f.name.casefold() == name.casefold() for f in self._functions):
            return web.Response(
                status=400,
                text="devhost does not emulate admin invoke of HTTP functions: call "
                "the function's route instead",
            )
        if invoke is None:
            return web.Response(status=404)
        text = invocation.get("input")
        self._begin()
        self._host_threads.submit(self._finish_after, invoke, None if text is None else str(text))
        return web.Response(status=202)

    def _finish_after(self, invoke: DirectInvoker, text: str | None) -> None:
        try:
            invoke(text)
        except Exception:
            logger.exception("Invoking a function through the admin API failed")
        finally:
            self._end()

    async def _blobs_webhook(self, request: web.Request) -> web.Response:
        """The blob extension's Event Grid webhook (HttpRequestProcessor)."""
        assert self._blob_events is not None
        event_type = request.headers.get("aeg-event-type", "").casefold()
        function_id = request.query.get("functionName", "")
        try:
            payload = json.loads(await request.read())
        except ValueError:
            return web.Response(status=400, text="the request content is not JSON")
        if event_type == "subscriptionvalidation":
            event = payload[0] if isinstance(payload, list) else payload
            code = (event.get("data") or {}).get("validationCode")
            logger.info("perform handshake with eventGrid for function: %s", function_id)
            return web.json_response({"validationResponse": code})
        if event_type == "notification":
            events = payload if isinstance(payload, list) else [payload]
            sink = self._blob_events
            try:
                await self._in_host_thread(lambda: sink(function_id, events))
            except ValueError as error:
                return web.Response(status=400, text=str(error))
            return web.Response(status=202)
        if event_type == "unsubscribe":
            return web.Response(status=202)
        return web.Response(status=400)

    async def _in_host_thread(self, work: Callable[[], Any]) -> Any:
        """Run blocking host work (storage calls, waiting for the worker) off the loop."""
        self._begin()
        try:
            return await self._loop.run_in_executor(self._host_threads, work)
        finally:
            self._end()

    def _begin(self) -> None:
        with self._in_flight_changed:
            self._in_flight += 1

    def _end(self) -> None:
        with self._in_flight_changed:
            self._in_flight -= 1
            self._in_flight_changed.notify_all()


def _http_request(
    request: web.Request, route_values: Mapping[str, str], body: bytes
) -> func.HttpRequest:
    """The request as the host sends it (RpcHttp), decoded by the worker's converter."""
    headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        headers.setdefault(name.lower(), []).append(value)
    query: dict[str, list[str]] = {}
    for name, value in request.query.items():
        query.setdefault(name, []).append(value)
    data = {
        "method": Datum(request.method, "string"),
        "url": Datum(str(request.url), "string"),
        "headers": {name: Datum(",".join(values), "string") for name, values in headers.items()},
        "query": {name: Datum(",".join(values), "string") for name, values in query.items()},
        "params": {name: Datum(value, "string") for name, value in route_values.items()},
        "body": Datum(body, "bytes"),
    }
    return HttpRequestConverter.decode(Datum(data, "http"), trigger_metadata={})


def _http_response(result: Any) -> web.Response:
    """What the host sends for a function's return value; nothing returned means 200."""
    if result is None:
        return web.Response(status=200)
    datum = HttpResponseConverter.encode(result, expected_type=None)
    if datum.type == "string":
        return web.Response(
            status=200, body=datum.value.encode(), content_type="text/plain", charset="utf-8"
        )
    value = datum.value
    headers: CIMultiDict[str] = CIMultiDict()
    for name, header in value["headers"].items():
        if name.casefold() not in _HOP_BY_HOP:
            headers[name] = header.value
    for cookie in value["cookies"] or []:
        for morsel in cookie.values():
            headers.add("Set-Cookie", morsel.OutputString())
    return web.Response(
        status=int(value["status_code"].value), body=value["body"].value, headers=headers
    )
