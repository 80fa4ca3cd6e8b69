"""Serving profiles: validation with messages an operator understands, and the config they generate."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from rest_framework.exceptions import ValidationError
from tritonclient.grpc import model_config_pb2 as mc

from appliance.catalog.models import Model, ModelVersion
from appliance.catalog.profile import ProfileError, check_against, normalise
from appliance.catalog.tritonconfig import render_config, warmup_files

SIGNATURE = {
    "inputs": [{"name": "IMAGE", "datatype": "FP32", "dims": [4]}],
    "outputs": [{"name": "LABEL", "datatype": "INT32", "dims": [1]}],
}


def _version(profile: dict[str, Any], **fields: Any) -> ModelVersion:
    values = {"number": 2, "format": "python", "signature": SIGNATURE, "max_batch_size": 16, "decoupled": False}
    values.update(fields)
    return ModelVersion(model=Model(name="m", serving_profile=profile), artifact_sha256="0" * 64, artifact_size=1, **values)


def _config(profile: dict[str, Any], **fields: Any) -> mc.ModelConfig:
    return text_format.Parse(render_config(_version(profile, **fields), versions=[2]), mc.ModelConfig())


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"batch": 4}, "unknown field"),
        ({"dynamic_batching": {"priority_levels": 2, "default_priority_level": 3}}, "between 1 and priority_levels (2)"),
        ({"dynamic_batching": {"default_priority_level": 1}}, "set priority_levels before"),
        ({"dynamic_batching": {"priority_levels": 2, "default_priority_level": 1,
                               "priority_queue_policy": {"5": {}}}}, "names level '5'"),  # fmt: skip
        ({"dynamic_batching": {"preferred_batch_sizes": [4, 4]}}, "repeats a size"),
        ({"instance_group": {"kind": "cpu", "gpus": [0]}}, "only be named for kind 'gpu'"),
        ({"warmup": {"source": "warm"}}, "is not a valid choice"),
    ],
)
def test_invalid_profiles_name_the_problem(profile: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        normalise(profile)


@pytest.mark.parametrize(
    ("profile", "fields", "message"),
    [
        ({"max_batch_size": 32}, {}, "max_batch_size 32 exceeds what version 2 supports (16)"),
        ({"dynamic_batching": {"preferred_batch_sizes": [8, 32]}}, {}, "preferred batch size 32 exceeds max_batch_size 16"),
        ({"instance_group": {"kind": "gpu"}}, {}, "run on the CPU here"),
        ({"instance_group": {"kind": "cpu"}}, {"format": "tensorrt_plan"}, "runs on a GPU"),
        ({"warmup": {"source": "samples"}}, {}, "has no stored sample inputs"),
        ({"warmup": {"source": "zero", "batch_size": 32}}, {}, "warm-up batch size 32 exceeds"),
        ({"warmup": {"source": "zero"}}, {"signature": {**SIGNATURE, "inputs": [{"name": "T", "datatype": "BYTES", "dims": [1]}]}},
         "synthetic warm-up needs fixed dims and no BYTES"),
    ],
)
def test_profiles_that_do_not_fit_the_version_are_refused(profile: dict[str, Any], fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError, match=re.escape(message)):
        check_against(_version(profile, **fields), normalise(profile))


def test_defaults_batch_without_delay_and_warm_up_with_zeros() -> None:
    config = _config({})
    assert config.max_batch_size == 16
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 0
    assert not config.dynamic_batching.preferred_batch_size, "preferred sizes only when asked"
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU and config.instance_group[0].count == 1
    assert config.model_warmup[0].inputs["IMAGE"].zero_data
    assert not config.response_cache.enable
    assert list(config.version_policy.specific.versions) == [2]


def test_every_field_reaches_the_config() -> None:
    config = _config({
        "max_batch_size": 8,
        "dynamic_batching": {"preferred_batch_sizes": [4, 8], "max_queue_delay_us": 300, "priority_levels": 3,
                             "default_priority_level": 2,
                             "default_queue_policy": {"timeout_action": "delay", "default_timeout_us": 1000, "max_queue_size": 9},
                             "priority_queue_policy": {"1": {"max_queue_size": 2}}},
        "instance_group": {"count": 3, "kind": "cpu"},
        "warmup": {"source": "random", "batch_size": 8, "count": 2},
        "response_cache": True,
    })  # fmt: skip
    batching = config.dynamic_batching
    assert (config.max_batch_size, list(batching.preferred_batch_size), batching.max_queue_delay_microseconds) == (8, [4, 8], 300)
    assert (batching.priority_levels, batching.default_priority_level) == (3, 2)
    assert batching.default_queue_policy.timeout_action == mc.ModelQueuePolicy.DELAY
    assert (batching.default_queue_policy.default_timeout_microseconds, batching.default_queue_policy.max_queue_size) == (1000, 9)
    assert batching.priority_queue_policy[1].max_queue_size == 2
    assert config.instance_group[0].count == 3
    assert (config.model_warmup[0].batch_size, config.model_warmup[0].count) == (8, 2)
    assert config.model_warmup[0].inputs["IMAGE"].random_data and config.response_cache.enable


def test_sample_warm_up_writes_the_samples_as_raw_files() -> None:
    version = _version({"warmup": {"source": "samples"}}, sample_inputs={"IMAGE": [1, 2, 3, 4]})
    config = text_format.Parse(render_config(version, versions=[2]), mc.ModelConfig())
    name = config.model_warmup[0].inputs["IMAGE"].input_data_file
    files = warmup_files(version, version.model.serving_profile)
    assert np.frombuffer(files[name], dtype=np.float32).tolist() == [1, 2, 3, 4]


def test_decoupled_and_unbatched_versions_get_what_they_can_use() -> None:
    decoupled = _config({}, decoupled=True, max_batch_size=0)
    assert decoupled.model_transaction_policy.decoupled and not decoupled.model_warmup
    assert not decoupled.HasField("dynamic_batching")
    with pytest.raises(ProfileError, match="decoupled"):
        check_against(_version({}, decoupled=True, max_batch_size=0), normalise({"warmup": {"source": "zero"}}))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"not json", "JSON document"),
        (b'{"steps": []}', "non-empty 'steps'"),
        (b'{"steps": [{"model": "ghost", "input_map": {"IMAGE": "IMAGE"}, "output_map": {"LABEL": "LABEL"}}]}',
         "'ghost' is not in the catalog"),
        (b'{"steps": [{"model": "m", "input_map": {"IMAGE": "PIXELS"}, "output_map": {"LABEL": "LABEL"}}]}',
         "reads ['PIXELS']"),
        (b'{"steps": [{"model": "m", "input_map": {"IMAGE": "IMAGE"}, "output_map": {"PROBABILITIES": "P"}}]}',
         "no step produces the ensemble outputs ['LABEL']"),
    ],
)
def test_ensemble_specifications_are_validated(document: bytes, message: str) -> None:
    from appliance.catalog.ensemble import EnsembleError, parse_steps
    from appliance.catalog.services import model_create

    model_create(name="m")
    with pytest.raises(EnsembleError, match=re.escape(message)):
        parse_steps(document, SIGNATURE)


def test_ensemble_config_chains_its_steps() -> None:
    steps = [{"model": "pre", "input_map": {"X": "IMAGE"}, "output_map": {"Y": "mid"}},
             {"model": "clf", "input_map": {"IMAGE": "mid"}, "output_map": {"LABEL": "LABEL"}}]  # fmt: skip
    config = _config({}, format="ensemble", ensemble_steps=steps)
    assert config.platform == "ensemble" and not config.instance_group and not config.model_warmup
    assert not config.HasField("dynamic_batching")
    assert [(s.model_name, s.model_version, dict(s.input_map)) for s in config.ensemble_scheduling.step] == [
        ("pre", -1, {"X": "IMAGE"}), ("clf", -1, {"IMAGE": "mid"})]
