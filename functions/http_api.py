"""HTTP routes: start a run on demand, and read runs and exports (auth level FUNCTION).

Each passes the request's headers on: with EXPORT_API_AUTH=entra the caller's app roles come
from the client-principal header App Service Authentication adds (shared/core/access.py).
Each imports its entry point when called, not at indexing (functions/__init__.py).
"""

from typing import TYPE_CHECKING

import azure.functions as func

if TYPE_CHECKING:
    from shared.adapters.services import Services
    from shared.entrypoints.http_api import ApiResponse

bp = func.Blueprint()


def _services() -> "Services":
    from shared.adapters.services import app_services

    return app_services()


def _respond(result: "ApiResponse") -> func.HttpResponse:
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
    from shared.entrypoints import http_api as api

    return _respond(
        api.start_export_run(
            _services(), req.route_params["name"], req.get_body(), headers=req.headers
        )
    )


@bp.function_name("start_teardown")
@bp.route(route="exports/{name}/teardown", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def start_teardown(req: func.HttpRequest) -> func.HttpResponse:
    """202 with the teardown run: the export's membership is removed from everyone it holds."""
    from shared.entrypoints import http_api as api

    return _respond(
        api.start_teardown(
            _services(), req.route_params["name"], req.get_body(), headers=req.headers
        )
    )


@bp.function_name("list_export_runs")
@bp.route(route="exports/{name}/runs", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def list_export_runs(req: func.HttpRequest) -> func.HttpResponse:
    from shared.entrypoints import http_api as api

    return _respond(
        api.list_export_runs(
            _services(), req.route_params["name"], req.params.get("limit"), headers=req.headers
        )
    )


@bp.function_name("list_exports")
@bp.route(route="exports", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def list_exports(req: func.HttpRequest) -> func.HttpResponse:
    from shared.entrypoints import http_api as api

    return _respond(api.list_exports(_services(), headers=req.headers))


@bp.function_name("replay_run")
@bp.route(route="runs/{run_id}/replay", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def replay_run(req: func.HttpRequest) -> func.HttpResponse:
    """202 with the re-opened run: its rejected deliveries are sent again."""
    from shared.entrypoints import http_api as api

    return _respond(api.replay(_services(), req.route_params["run_id"], headers=req.headers))


@bp.function_name("get_run")
@bp.route(route="runs/{run_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def get_run(req: func.HttpRequest) -> func.HttpResponse:
    from shared.entrypoints import http_api as api

    return _respond(api.get_run(_services(), req.route_params["run_id"], headers=req.headers))
