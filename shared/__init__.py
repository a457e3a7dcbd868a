"""The Braze segment exporter: a pure core, adapters to Azure and Braze, the pipeline's stages, and
the CLI and HTTP entry points.

Nothing here imports `azure.functions` or reads settings at import time, so the same code runs
under the Functions host, the local host, the CLI and the tests.
"""
