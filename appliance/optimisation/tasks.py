"""The optimiser's queue (settings.OPTIMISE_QUEUE, its own worker: a job takes minutes
and must not hold up rollouts on the control queue)."""

from __future__ import annotations

from celery import shared_task

from appliance.optimisation.services import TASK_RUN


@shared_task(name=TASK_RUN)
def run(job_id: str) -> str:
    from appliance.optimisation.jobs import run_job

    return run_job(job_id)
