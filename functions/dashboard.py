"""HTTP routes for people: the status page and the run files it links to (auth level FUNCTION).

The page is opened in a browser with `?code=<function key>`; its links carry the key on.
Each route imports the page's module when called, not at indexing (functions/__init__.py).
"""

from typing import TYPE_CHECKING

import azure.functions as func

if TYPE_CHECKING:
    from shared.adapters.services import Services
    from shared.entrypoints.dashboard import WebResponse

bp = func.Blueprint()


def _services() -> "Services":
    from shared.adapters.services import app_services

    return app_services()


def _respond(result: "WebResponse") -> func.HttpResponse:
    """The Content-Type is among the headers, so the worker sends it as it is."""
    return func.HttpResponse(result.body, status_code=result.status, headers=result.headers)


@bp.function_name("dashboard")
@bp.route(route="dashboard", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def dashboard(req: func.HttpRequest) -> func.HttpResponse:
    """The status page: exports, schedules, last runs, and what failed first."""
    from shared.entrypoints import dashboard as page

    return _respond(page.dashboard(_services(), params=req.params, headers=req.headers))


@bp.function_name("get_run_report")
@bp.route(route="runs/{run_id}/report", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def get_run_report(req: func.HttpRequest) -> func.HttpResponse:
    """The run's report.json, shown in the browser."""
    from shared.entrypoints import dashboard as page

    return _respond(
        page.run_file(_services(), req.route_params["run_id"], page.REPORT, headers=req.headers)
    )


@bp.function_name("get_run_rejected_rows")
@bp.route(route="runs/{run_id}/rejected", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def get_run_rejected_rows(req: func.HttpRequest) -> func.HttpResponse:
    """The run's rejected.jsonl, as a download (it holds personal data)."""
    from shared.entrypoints import dashboard as page

    return _respond(
        page.run_file(
            _services(), req.route_params["run_id"], page.REJECTED_ROWS, headers=req.headers
        )
    )
