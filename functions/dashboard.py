"""HTTP routes for people: the status page and the run files it links to (auth level FUNCTION).

The page is opened in a browser with `?code=<function key>`; its links carry the key on.
"""

import azure.functions as func

from shared.adapters.services import app_services
from shared.entrypoints import dashboard as page

bp = func.Blueprint()


def _respond(result: page.WebResponse) -> func.HttpResponse:
    """The Content-Type is among the headers, so the worker sends it as it is."""
    return func.HttpResponse(result.body, status_code=result.status, headers=result.headers)


@bp.function_name("dashboard")
@bp.route(route="dashboard", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def dashboard(req: func.HttpRequest) -> func.HttpResponse:
    """The status page: exports, schedules, last runs, and what failed first."""
    return _respond(page.dashboard(app_services(), params=req.params, headers=req.headers))


@bp.function_name("get_run_report")
@bp.route(route="runs/{run_id}/report", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def get_run_report(req: func.HttpRequest) -> func.HttpResponse:
    """The run's report.json, shown in the browser."""
    return _respond(
        page.run_file(app_services(), req.route_params["run_id"], page.REPORT, headers=req.headers)
    )


@bp.function_name("get_run_rejected_rows")
@bp.route(route="runs/{run_id}/rejected", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def get_run_rejected_rows(req: func.HttpRequest) -> func.HttpResponse:
    """The run's rejected.jsonl, as a download (it holds personal data)."""
    return _respond(
        page.run_file(
            app_services(), req.route_params["run_id"], page.REJECTED_ROWS, headers=req.headers
        )
    )
