"""Trigger adapters, one blueprint per concern (and `last_attempt`, which the queue triggers
share); `function_app.py` registers the blueprints."""

from functions.blob_drop import bp as blob_drop_bp
from functions.dashboard import bp as dashboard_bp
from functions.delivery import bp as delivery_bp
from functions.http_api import bp as http_api_bp
from functions.planning import bp as planning_bp
from functions.scheduler import bp as scheduler_bp

BLUEPRINTS = (planning_bp, delivery_bp, scheduler_bp, http_api_bp, dashboard_bp, blob_drop_bp)
