"""aiohttp application: Braze's /users/track and /users/export/ids, plus the /_sandbox control
API that tests use to read back users, inspect stats and switch faults on a running server."""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import ValidationError

from braze_sandbox.config import FaultConfig, LimitConfig, Settings
from braze_sandbox.faults import Drop, FaultInjector
from braze_sandbox.limits import RateLimiter, rate_limit_headers
from braze_sandbox.stats import SandboxStats
from braze_sandbox.store import UserStore
from braze_sandbox.tracking import INPUT_ARRAYS, TrackProcessor

MAX_BODY_BYTES = 4 * 1024 * 1024  # Braze's documented request size limit for most endpoints
EXPORT_MAX_IDENTIFIERS = 50
# Profiles live until a reset: each time the store has grown by this many, everything alive is
# moved out of the collector's sight (gc.freeze), so a full collection no longer scans millions
# of profiles (a pause of over a second, every request waiting, at 5M).
FREEZE_EVERY_USERS = 250_000
USERS_STREAM_CHUNK = 1000

PARSE_ERROR = "Error while parsing request body. Please check your syntax."
NO_VALID_DATA = "Valid data must be provided in the 'attributes', 'events', or 'purchases' fields."
MAX_INPUT_EXCEEDED = "Max Input Length Exceeded"
SettingsT = TypeVar("SettingsT", bound=Settings)
SERVER_ERROR_MESSAGES = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    # orjson rather than json: parsing and encoding are a large share of a request's cost.
    return web.Response(
        body=orjson.dumps(payload), status=status, headers=headers, content_type="application/json"
    )


class RequestRejected(Exception):
    """A request Braze would refuse as a whole; carries the status and Braze-style message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BrazeSandbox:
    """All mutable state of one sandbox, so the control API can reset or reconfigure it live."""

    def __init__(
        self,
        api_keys: Iterable[str],
        limits: LimitConfig,
        faults: FaultConfig,
        request_log_size: int = 1000,
    ) -> None:
        self.api_keys = frozenset(api_keys)
        self.limits = limits
        self.faults = FaultInjector(faults)
        self.limiter = RateLimiter()
        self.store = UserStore()
        self._frozen_at_users = 0
        self.tracker = TrackProcessor(self.store)
        self.stats = SandboxStats()
        self.request_log: deque[tuple[int | str, bytes]] = deque(maxlen=request_log_size)

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/users/track", self.users_track)
        app.router.add_post("/users/track/", self.trailing_slash)
        app.router.add_post("/users/export/ids", self.users_export_ids)
        app.router.add_get("/_sandbox/users", self.list_users)
        app.router.add_get("/_sandbox/users/{external_id:.+}", self.get_user)
        app.router.add_get("/_sandbox/stats", self.get_stats)
        app.router.add_get("/_sandbox/timeline", self.get_timeline)
        app.router.add_post("/_sandbox/reset", self.reset)
        app.router.add_get("/_sandbox/faults", self.get_faults)
        app.router.add_put("/_sandbox/faults", self.put_faults)
        app.router.add_get("/_sandbox/limits", self.get_limits)
        app.router.add_put("/_sandbox/limits", self.put_limits)
        app.router.add_get("/_sandbox/requests", self.get_requests)
        return app

    # --- Braze API -------------------------------------------------------------------------

    async def users_track(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests_total += 1
        api_key = self._authenticate(request)
        if api_key is None:
            return self._finish(self._unauthorized(request))
        client = request.headers.get("User-Agent", "")
        now = time.time()
        self.stats.arrivals_per_second[int(now)] += 1
        self.limiter.arrive(api_key, client, request.protocol, now)
        body: bytes | None
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body = None  # answered with 413 once the request has been rate-counted
        response = self._track(api_key, request.content_type, body)
        delay = self.faults.pick_latency_seconds()
        if delay:
            await asyncio.sleep(delay)
        self.request_log.append((response.status if response else "dropped", body or b""))
        if response is None:
            self.stats.responses_by_status["dropped"] += 1
            if request.transport is not None:  # None if the client already hung up
                request.transport.close()
            return web.Response()  # never written: the connection is already closing
        if response.status == 429:
            self.stats.throttled_per_second[int(now)] += 1
            await self._tell_to_wait(request, response, api_key, client)
        return self._finish(response)

    async def _tell_to_wait(
        self, request: web.Request, response: web.Response, api_key: str, client: str
    ) -> None:
        """Write the 429 now and note the reset it tells the client: its Retry-After counted
        from the moment the client could first read it (the earliest it may send again)."""
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionResetError:
            return  # the client hung up, so it was told nothing
        written_at = time.time()
        retry_after = int(response.headers["X-Ratelimit-Retry-After"])
        self.limiter.told_to_wait(api_key, client, request.protocol, written_at + retry_after)

    def _track(self, api_key: str, content_type: str, body: bytes | None) -> web.Response | None:
        """Everything /users/track does after auth, synchronously so one request's updates are
        atomic; None means "drop the connection without answering"."""
        now = time.time()
        limits = self.limits
        decision = self.limiter.admit(api_key, now, limits.rate_limit, limits.rate_window_seconds)
        if decision.retry_after is not None:
            return self._too_many_requests(decision.retry_after)
        burst_left = self.faults.burst_seconds_left(api_key, now)
        if burst_left:
            self.limiter.block(api_key, now + burst_left)
            self.stats.faults_injected["429"] += 1
            return self._too_many_requests(math.ceil(burst_left))
        headers = rate_limit_headers(decision, limits.reset_header, now)
        drop = self.faults.pick_drop()
        if drop is Drop.BEFORE_APPLY:
            self.stats.faults_injected["drop"] += 1
            return None
        server_error = self.faults.pick_server_error()
        if server_error is not None:
            self.stats.faults_injected[str(server_error)] += 1
            return json_response(
                server_error, {"message": SERVER_ERROR_MESSAGES[server_error]}, headers
            )
        response = self._apply_track(content_type, body, limits, headers)
        if drop is Drop.AFTER_APPLY:
            self.stats.faults_injected["drop_after_apply"] += 1
            return None
        return response

    def _apply_track(
        self, content_type: str, body: bytes | None, limits: LimitConfig, headers: dict[str, str]
    ) -> web.Response:
        if body is None:
            return json_response(413, {"message": "Request Entity Too Large"}, headers)
        try:
            arrays = parse_track_body(content_type, body, limits.objects_per_request)
        except RequestRejected as error:
            return json_response(error.status, {"message": error.message}, headers)
        outcome = self.tracker.process(arrays, limits)
        if len(self.store) >= self._frozen_at_users + FREEZE_EVERY_USERS:
            gc.freeze()
            self._frozen_at_users = len(self.store)
        self.stats.objects_applied += outcome.objects_applied
        self.stats.objects_rejected += len(outcome.errors)
        self.stats.data_points += outcome.data_points
        if not any(outcome.processed.values()):
            # Every object failed: Braze answers 400 with the per-object errors.
            payload = {"message": NO_VALID_DATA, "errors": outcome.errors}
            return json_response(400, payload, headers)
        return json_response(201, outcome.response_body(), headers)

    async def trailing_slash(self, request: web.Request) -> web.Response:
        """Braze answers `/users/track/` with 403 rather than routing it."""
        self.stats.requests_total += 1
        return self._finish(json_response(403, {"message": "Access Denied"}))

    async def users_export_ids(self, request: web.Request) -> web.Response:
        self.stats.requests_total += 1
        if self._authenticate(request) is None:
            return self._finish(self._unauthorized(request))
        try:
            body = parse_json_object(request.content_type, await request.read())
            external_ids = _list_of(body, "external_ids", str)
            aliases = [_alias_key(alias) for alias in _list_of(body, "user_aliases", dict)]
            fields = body.get("fields_to_export")
            if fields is not None and not (
                type(fields) is list and all(type(f) is str for f in fields)
            ):
                raise RequestRejected(400, "'fields_to_export' must be an array of strings")
            if not external_ids and not aliases:
                raise RequestRejected(400, "Provide 'external_ids' or 'user_aliases'")
            if len(external_ids) + len(aliases) > EXPORT_MAX_IDENTIFIERS:
                raise RequestRejected(
                    400, f"At most {EXPORT_MAX_IDENTIFIERS} identifiers per request"
                )
        except RequestRejected as error:
            return self._finish(json_response(error.status, {"message": error.message}))
        users: list[dict[str, Any]] = []
        invalid_user_ids: list[str] = []
        for external_id in external_ids:
            profile = self.store.by_external_id.get(external_id)
            if profile is None:
                invalid_user_ids.append(external_id)
            else:
                users.append(profile.to_export(fields))
        for alias in aliases:
            profile = self.store.by_alias(alias)
            if profile is not None:
                users.append(profile.to_export(fields))
        payload = {"users": users, "invalid_user_ids": invalid_user_ids, "message": "success"}
        return self._finish(json_response(201, payload))

    def _authenticate(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token not in self.api_keys:
            return None
        return token

    @staticmethod
    def _unauthorized(request: web.Request) -> web.Response:
        if request.headers.get("Authorization", "").lower().startswith("bearer "):
            message = "Invalid API key"
        else:
            message = "Missing or malformed 'Authorization: Bearer <REST API key>' header"
        return json_response(401, {"message": message})

    @staticmethod
    def _too_many_requests(retry_after: int) -> web.Response:
        """Braze replaces the X-RateLimit-* headers on a 429 with X-Ratelimit-Retry-After."""
        return json_response(
            429,
            {"message": "API rate limit exceeded"},
            {"X-Ratelimit-Retry-After": str(retry_after)},
        )

    def _finish(self, response: web.Response) -> web.Response:
        self.stats.responses_by_status[str(response.status)] += 1
        return response

    # --- control API -----------------------------------------------------------------------

    async def get_user(self, request: web.Request) -> web.Response:
        profile = self.store.by_external_id.get(request.match_info["external_id"])
        if profile is None:
            return json_response(404, {"message": "no such user"})
        return json_response(200, profile.to_dict())

    async def list_users(self, request: web.Request) -> web.StreamResponse:
        """JSON Lines, written in chunks so a million users never become one giant string."""
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        profiles = self.store.profiles()
        for start in range(0, len(profiles), USERS_STREAM_CHUNK):
            chunk = profiles[start : start + USERS_STREAM_CHUNK]
            await response.write(b"".join(orjson.dumps(p.to_dict()) + b"\n" for p in chunk))
        await response.write_eof()
        return response

    async def get_stats(self, request: web.Request) -> web.Response:
        payload = self.stats.snapshot()
        payload["users"] = len(self.store)
        # Lets a benchmark compute CPU per request, which contention on the machine cannot skew.
        payload["process_cpu_seconds"] = time.process_time()
        payload["rate_limit"] = self.limiter.snapshot()
        return json_response(200, payload)

    async def get_timeline(self, request: web.Request) -> web.Response:
        """Per second, /users/track arrivals and 429s; per API key, requests in each window."""
        payload: dict[str, Any] = self.stats.timeline()
        payload["windows_per_key"] = self.limiter.windows()
        payload["rate_limit"] = self.limits.rate_limit
        payload["rate_window_seconds"] = self.limits.rate_window_seconds
        return json_response(200, payload)

    async def reset(self, request: web.Request) -> web.Response:
        """Forget users, stats, rate windows and logged requests; keep limits and faults, but
        restart the fault RNG so a seeded scenario replays from its start."""
        self.store.clear()
        gc.unfreeze()  # the forgotten profiles can be collected again
        self._frozen_at_users = 0
        self.stats = SandboxStats()
        self.limiter.clear()
        self.request_log.clear()
        self.faults.configure(self.faults.config)
        return json_response(200, {"message": "reset"})

    async def get_faults(self, request: web.Request) -> web.Response:
        return json_response(200, self.faults.config.model_dump(mode="json"))

    async def put_faults(self, request: web.Request) -> web.Response:
        """Patch fault options; active 429 bursts (and the waits they imposed) end here."""
        try:
            config = await _patched(request, self.faults.config)
        except RequestRejected as error:
            return json_response(error.status, {"message": error.message})
        self.faults.configure(config)
        self.limiter.lift_blocks()
        return json_response(200, config.model_dump(mode="json"))

    async def get_limits(self, request: web.Request) -> web.Response:
        return json_response(200, self.limits.model_dump(mode="json"))

    async def put_limits(self, request: web.Request) -> web.Response:
        try:
            self.limits = await _patched(request, self.limits)
        except RequestRejected as error:
            return json_response(error.status, {"message": error.message})
        return json_response(200, self.limits.model_dump(mode="json"))

    async def get_requests(self, request: web.Request) -> web.Response:
        """The last `limit` /users/track bodies, oldest first, with the status each got."""
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            limit = -1
        if limit < 0:
            return json_response(400, {"message": "'limit' must be a non-negative integer"})
        entries = list(self.request_log)[-limit:] if limit else []
        return json_response(
            200, {"requests": [{"status": s, "body": _decode_logged(b)} for s, b in entries]}
        )


def parse_json_object(content_type: str, body: bytes) -> dict[str, Any]:
    """Braze's whole-request checks shared by its endpoints: JSON content type, JSON object."""
    if content_type != "application/json":
        raise RequestRejected(415, "Content-Type must be application/json")
    try:
        parsed = orjson.loads(body)
    except ValueError:
        raise RequestRejected(400, PARSE_ERROR) from None
    if type(parsed) is not dict:
        raise RequestRejected(400, PARSE_ERROR)
    return parsed


def parse_track_body(content_type: str, body: bytes, max_objects: int) -> dict[str, list[Any]]:
    """The attributes/events/purchases arrays of a /users/track body, or a RequestRejected for
    anything that makes Braze refuse the whole request (nothing is applied then)."""
    parsed = parse_json_object(content_type, body)
    arrays: dict[str, list[Any]] = {}
    for name in INPUT_ARRAYS:
        if name not in parsed:
            continue
        objects = parsed[name]
        if type(objects) is not list or not objects:
            raise RequestRejected(400, f"'{name}' must be a non-empty array")
        arrays[name] = objects
    if not arrays:
        raise RequestRejected(400, NO_VALID_DATA)
    if sum(len(objects) for objects in arrays.values()) > max_objects:
        raise RequestRejected(400, MAX_INPUT_EXCEEDED)
    return arrays


def _list_of(body: dict[str, Any], key: str, item_type: type) -> list[Any]:
    value = body.get(key, [])
    if type(value) is not list or not all(type(item) is item_type for item in value):
        raise RequestRejected(400, f"'{key}' must be an array of {item_type.__name__}")
    return value


def _alias_key(alias: dict[str, Any]) -> tuple[str, str]:
    name, label = alias.get("alias_name"), alias.get("alias_label")
    if type(name) is not str or type(label) is not str:
        raise RequestRejected(400, "each user alias needs string 'alias_name' and 'alias_label'")
    return name, label


async def _patched(request: web.Request, settings: SettingsT) -> SettingsT:
    """`settings` with the request's JSON object of changes applied, or a 400 RequestRejected."""
    try:
        changes = parse_json_object(request.content_type, await request.read())
        return settings.patched(changes)
    except RequestRejected:
        raise RequestRejected(400, "body must be a JSON object of options to change") from None
    except ValidationError as error:
        raise RequestRejected(400, str(error)) from None


def _decode_logged(body: bytes) -> Any:
    """Logged bodies are returned parsed when they are JSON, else as text."""
    try:
        return orjson.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace")
