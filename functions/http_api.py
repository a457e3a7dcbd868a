"""HTTP routes: start a run on demand, and read runs and exports (auth level FUNCTION).

Each passes the request's headers on: with EXPORT_API_AUTH=entra the caller's app roles come
from the client-principal header App Service Authentication adds (shared/core/access.py).
"""

from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

import azure.functions as func

if TYPE_CHECKING:
    from shared.adapters.services import Services
    from shared.entrypoints.http_api import ApiResponse

bp = func.Blueprint()


def _respond(call: Callable[[ModuleType, "Services"], "ApiResponse"]) -> func.HttpResponse:
    """The answer of `call`, given the routes' module (shared/entrypoints/http_api.py) and the
    app's services: both imported by the first request, not at indexing (functions/__init__)."""
    from shared.adapters.services import app_services
    from shared.entrypoints import http_api

    result = call(http_api, app_services())
    return func.HttpResponse(
        result.json(),
        status_code=result.status,
        headers=result.headers,
        mimetype="application/json",
    )


@bp.function_name("start_export_run")
@bp.route(route="exports/{name}/runs", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def start_export_run(req: func.HttpRequest) -> func.HttpResponse:
    """202 with the run and a Location header; 409 while the export has a run in progress."""
    return _respond(
        lambda api, services: api.start_export_run(
            services, req.route_params["name"], req.get_body(), headers=req.headers
        )
    )


@bp.function_name("start_teardown")
@bp.route(route="exports/{name}/teardown", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def start_teardown(req: func.HttpRequest) -> func.HttpResponse:
    """202 with the teardown run: the export's membership is removed from everyone it holds."""
    return _respond(
        lambda api, services: api.start_teardown(
            services, req.route_params["name"], req.get_body(), headers=req.headers
        )
    )


@bp.function_name("list_export_runs")
@bp.route(route="exports/{name}/runs", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def list_export_runs(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(
        lambda api, services: api.list_export_runs(
            services, req.route_params["name"], req.params.get("limit"), headers=req.headers
        )
    )


@bp.function_name("list_exports")
@bp.route(route="exports", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def list_exports(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(lambda api, services: api.list_exports(services, headers=req.headers))


@bp.function_name("replay_run")
@bp.route(route="runs/{run_id}/replay", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def replay_run(req: func.HttpRequest) -> func.HttpResponse:
    """202 with the re-opened run: its rejected deliveries are sent again."""
    return _respond(
        lambda api, services: api.replay(services, req.route_params["run_id"], headers=req.headers)
    )


@bp.function_name("get_run")
@bp.route(route="runs/{run_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def get_run(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(
        lambda api, services: api.get_run(services, req.route_params["run_id"], headers=req.headers)
    )
