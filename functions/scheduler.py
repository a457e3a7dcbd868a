"""Timer: every minute, start the scheduled exports whose slot has come and end stalled runs."""

import logging

import azure.functions as func

from shared.core.runs import utcnow

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("schedule_exports")
@bp.timer_trigger(arg_name="timer", schedule="0 * * * * *", run_on_startup=False, use_monitor=True)
def schedule_exports(timer: func.TimerRequest) -> None:
    """Idempotent per slot: a late, repeated or concurrent tick starts each slot's run once."""
    from shared.adapters.services import app_services
    from shared.pipeline.stall_sweep import sweep_stalled
    from shared.pipeline.start import schedule_tick

    if timer.past_due:
        log.info("scheduler tick is late; missed slots run once now")
    services = app_services()
    outcomes = schedule_tick(services, utcnow())
    for export_name, outcome in outcomes.items():
        log.info("schedule: export %s -> %s", export_name, outcome)
    for run_id, outcome in sweep_stalled(services, utcnow()).items():
        log.warning("stalled-run sweep: run %s -> %s", run_id, outcome)
