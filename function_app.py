"""Composition root for the Functions host: register every blueprint, nothing else."""

import azure.functions as func

from functions import BLUEPRINTS

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
for blueprint in BLUEPRINTS:
    app.register_functions(blueprint)
