"""The optimiser's queue (settings.OPTIMISE_QUEUE, its own worker: a job takes minutes
and must not hold up rollouts on the control queue)."""

from __future__ import annotations

import logging
import time
import uuid

from celery import shared_task

from appliance.catalog.artifacts import artifact_read_verified
from appliance.optimisation import profiles, services
from appliance.optimisation.choices import JobState
from appliance.optimisation.models import ProfileSearch
from appliance.optimisation.services import TASK_GATE_RUN, TASK_PROFILE_SEARCH, TASK_RUN
from appliance.optimisation.validation_data import check_against_signature, parse_validation_set

log = logging.getLogger(__name__)


@shared_task(name=TASK_RUN)
def run(job_id: str) -> str:
    from appliance.optimisation.jobs import run_job

    return run_job(job_id)


@shared_task(name=TASK_GATE_RUN)
def gate_run(run_id: str) -> str:
    from appliance.optimisation.gaterun import run_gate

    return run_gate(run_id)


@shared_task(name=TASK_PROFILE_SEARCH)
def profile_search(search_id: str) -> str:
    """One profile search (optimisation/profiles.py): claims the row, measures each profile
    of the grid on a private Triton (gone after, however the search ends), records a result
    per profile as it goes and the recommendation at the end."""
    result = services.run_tracked(ProfileSearch, search_id, profiles.host_description(), _search)
    _sweep()
    return result


def _sweep() -> None:
    """What searches of this appliance that no longer run left on this host (directories of
    other ids are not ours to judge)."""
    names = profiles.scratch_ids()
    ids = [name for name in names if _is_uuid(name)]
    stale = ProfileSearch.objects.filter(pk__in=ids).exclude(state=JobState.RUNNING).values_list("pk", flat=True)
    swept = sorted(str(pk) for pk in stale)
    if swept:
        log.warning("removing what profile searches %s left behind", ", ".join(swept))
        profiles.sweep(swept)


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def _search(search: ProfileSearch) -> None:
    def say(message: str) -> None:
        services.profile_search_progress(search_id=search.pk, message=message)

    version = search.version
    candidates, _ = profiles.expand(search.grid, version_max_batch_size=version.max_batch_size,
                                    concurrency=search.concurrency)  # fmt: skip
    set_inputs = None
    if search.input_set is not None:
        stored = artifact_read_verified(search.input_set.content_sha256)
        data = parse_validation_set(stored, metric=search.input_set.metric)
        check_against_signature(data, version.signature)
        set_inputs = data.inputs
    rows = profiles.request_rows(version, set_inputs)
    source = f"{len(rows)} rows of '{search.input_set.name}'" if search.input_set else "one row (sample or zeros)"
    say(f"starting a private Triton with {version} ({len(candidates)} profiles; inputs: {source})")
    outcomes: list[profiles.Outcome] = []
    results = []
    started = time.monotonic()
    cut = ""
    with profiles.Bench(version=version, workdir=profiles.scratch_root() / str(search.pk)) as bench:
        for position, candidate in enumerate(candidates):
            cut = profiles.time_limit_cut(elapsed_s=time.monotonic() - started, limit_s=search.time_limit_s,
                                          measured=position, total=len(candidates))  # fmt: skip
            if cut:
                say(cut)
                break
            say(f"{position + 1}/{len(candidates)}: {candidate.label()}")
            outcome = bench.measure(candidate, profiles.serving_profile(candidate, search.base_profile), rows,
                                    concurrency=search.concurrency, requests=search.requests)  # fmt: skip
            outcomes.append(outcome)
            results.append(services.profile_search_record(search=search, position=position, outcome=outcome))
    best, speed_up, why = profiles.recommend(outcomes, objective_p99_ms=search.objective_p99_ms,
                                             concurrency=search.concurrency)  # fmt: skip
    services.profile_search_finish(search_id=search.pk, recommended=None if best is None else results[best],
                                   recommendation=f"{why} {cut}".strip(), speed_up=speed_up)  # fmt: skip
