"""Trigger adapters, one blueprint per concern (and `last_attempt`, which the queue triggers
share); `function_app.py` registers the blueprints.

Each handler imports the pipeline and the app's services when it runs, not at the top of its
module: the host imports `function_app` to index the functions at every cold start, and those
imports (pydantic's models, the Table and Queue SDKs) took about half a second of it.
Tests patch them where they are defined (`shared.adapters.services.app_services`, ...);
tests/test_cold_import.py keeps them out of the index's imports. A module that fails to
import now fails its trigger's invocations instead of the indexing: that test also imports
what the triggers import, and `make test` calls every trigger."""

from functions.blob_drop import bp as blob_drop_bp
from functions.dashboard import bp as dashboard_bp
from functions.delivery import bp as delivery_bp
from functions.http_api import bp as http_api_bp
from functions.planning import bp as planning_bp
from functions.scheduler import bp as scheduler_bp

BLUEPRINTS = (planning_bp, delivery_bp, scheduler_bp, http_api_bp, dashboard_bp, blob_drop_bp)
