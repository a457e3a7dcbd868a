"""Trigger adapters, one blueprint per concern; `function_app.py` registers them all."""

from functions.delivery import bp as delivery_bp
from functions.planning import bp as planning_bp

BLUEPRINTS = (planning_bp, delivery_bp)
