"""Core of the Braze segment exporter: pure logic plus lazily created Azure and Braze clients.

Nothing here imports `azure.functions` or reads settings at import time, so the same code runs
under the Functions host, the local host, the CLI and the tests.
"""
