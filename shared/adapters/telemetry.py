"""Telemetry: every log line carries its run, export and chunk; with
APPLICATIONINSIGHTS_CONNECTION_STRING set, logs and metrics go to Application Insights through
OpenTelemetry (azure-monitor-opentelemetry).

Without a connection string nothing is imported and recording a metric costs one check, so local
runs and tests pay nothing. The distro's automatic instrumentations stay off: instrumenting
requests and urllib3 would add work to every storage call (the Braze client's libcurl has
none), and Azure SDK spans would multiply ingestion without telling an operator more than the
metrics below.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

log = logging.getLogger(__name__)

METER_NAME = "braze_segment_exporter"
LOGGER_NAME = "shared"  # the package's loggers: what the OpenTelemetry log handler exports

_context: ContextVar[Mapping[str, str] | None] = ContextVar("export_log_context", default=None)
_factory_installed = False


def _install_record_factory() -> None:
    """Stamp every log record (whatever logger and handler) with the job it belongs to: the
    host's and the OpenTelemetry handler both see `run_id`, `export_name` and `chunk`."""
    global _factory_installed
    if _factory_installed:
        return
    _factory_installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        context = _context.get() or {}
        record.run_id = context.get("run_id", "-")
        record.export_name = context.get("export_name", "-")
        record.chunk = context.get("chunk", "-")
        return record

    logging.setLogRecordFactory(factory)


@contextlib.contextmanager
def job_context(job: object) -> Iterator[None]:
    """Log lines written while handling a queue message name its run, export and chunk (or
    split / partition): read off the message, which always carries run_id and export_name."""
    _install_record_factory()
    context = {
        "run_id": str(getattr(job, "run_id", "-")),
        "export_name": str(getattr(job, "export_name", "-")),
    }
    for field, label in (("chunk_index", "chunk"), ("split", "split"), ("partition", "partition")):
        value = getattr(job, field, None)
        if value is not None:
            context["chunk"] = getattr(job, "label", f"{label} {value}")  # a partition job's
            break
    token = _context.set(context)
    try:
        yield
    finally:
        _context.reset(token)


class Metrics:
    """The custom metrics an operator charts and alerts on (Application Insights:
    customMetrics). Instruments come from whatever meter provider is current."""

    def __init__(self, meter: Any) -> None:
        self._sent = meter.create_counter(
            "exporter.profiles_sent", unit="{profile}", description="Profiles Braze accepted"
        )
        self._rejected = meter.create_counter(
            "exporter.profiles_rejected",
            unit="{profile}",
            description="Rows rejected by validation or profiles rejected by Braze",
        )
        self._rate_limited = meter.create_counter(
            "exporter.braze_rate_limited", unit="{response}", description="HTTP 429s from Braze"
        )
        self._latency = meter.create_histogram(
            "exporter.braze_request_latency", unit="ms", description="Braze /users/track round trip"
        )
        self._duration = meter.create_histogram(
            "exporter.run_duration", unit="s", description="A run, queued to finished"
        )

    def braze_response(self, status: int, seconds: float) -> None:
        attributes = {"status_class": f"{status // 100}xx"}
        self._latency.record(seconds * 1000, attributes)
        if status == 429:
            self._rate_limited.add(1)

    def run_ended(
        self, export: str, status: str, seconds: float, accepted: int, rejected: dict[str, int]
    ) -> None:
        """Once per finalization: exact counts, whatever retries delivery took."""
        self._duration.record(seconds, {"export": export, "status": status})
        self._sent.add(accepted, {"export": export})
        for stage, count in rejected.items():
            if count:
                self._rejected.add(count, {"export": export, "stage": stage})


_metrics: Metrics | None = None


def metrics() -> Metrics | None:
    """The process's metrics, or None when telemetry is off (callers skip recording)."""
    return _metrics


def use_meter_provider(provider: Any | None) -> None:
    """Record metrics into `provider` (the Azure Monitor one, or a test's in-memory reader);
    None turns recording off."""
    global _metrics
    _install_record_factory()
    _metrics = None if provider is None else Metrics(provider.get_meter(METER_NAME))


def configure(environ: Mapping[str, str] | None = None) -> bool:
    """Send logs and metrics to Application Insights when its connection string is set.
    Called once per process, when the services are first made. True if it did."""
    env = os.environ if environ is None else environ
    connection_string = env.get("APPLICATIONINSIGHTS_CONNECTION_STRING")
    if not connection_string or _metrics is not None:
        return False
    from azure.monitor.opentelemetry import configure_azure_monitor
    from opentelemetry import metrics as otel_metrics

    try:
        configure_azure_monitor(
            connection_string=connection_string,
            credential=_credential(env),
            logger_name=LOGGER_NAME,
            disable_tracing=True,
            enable_live_metrics=False,
            instrumentation_options={
                name: {"enabled": False}
                for name in (
                    "azure_sdk",
                    "django",
                    "fastapi",
                    "flask",
                    "psycopg2",
                    "requests",
                    "urllib",
                    "urllib3",
                )
            },
        )
    except Exception as error:  # telemetry must never stop exports
        log.warning(
            "telemetry is off: APPLICATIONINSIGHTS_CONNECTION_STRING could not be used (%s: %s)",
            type(error).__name__,
            error,
        )
        return False
    use_meter_provider(otel_metrics.get_meter_provider())
    log.info("telemetry: logs and metrics go to Application Insights")
    return True


def _credential(env: Mapping[str, str]) -> Any:
    """Application Insights with local auth disabled (as deployed) takes only Entra tokens:
    `APPLICATIONINSIGHTS_AUTHENTICATION_STRING` says so, with the identity's client id."""
    authentication = env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "")
    if "Authorization=AAD" not in authentication:
        return None
    from azure.identity import ManagedIdentityCredential

    parts = dict(part.split("=", 1) for part in authentication.split(";") if "=" in part)
    return ManagedIdentityCredential(client_id=parts.get("ClientId") or env.get("AZURE_CLIENT_ID"))
