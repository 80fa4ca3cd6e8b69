"""The vLLM runner's start (catalog/vllm_runner.py): an engine that exits while it starts gets
one more start before the version's load fails; one that exits twice fails the load with the
engine's own last words. The engine here is a real process speaking HTTP on the runner's Unix
socket (a stand-in for vLLM's server: the runner only needs its /health); the Triton Python
backend's module is an empty stand-in, as in test_minilm_graph.py."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

RUNNER = Path(__file__).resolve().parents[2] / "appliance" / "catalog" / "vllm_runner.py"

# Fails while a counter file says it has failed fewer than FAILS times; then serves /health.
ENGINE = textwrap.dedent('''
    import http.server, os, socketserver, sys
    args = sys.argv
    socket_path = args[args.index("--uds") + 1]
    counter = os.environ["FAKE_ENGINE_COUNTER"]
    starts = int(open(counter).read() or 0) + 1 if os.path.exists(counter) else 1
    open(counter, "w").write(str(starts))
    if starts <= int(os.environ["FAKE_ENGINE_FAILS"]):
        print(f"engine start {starts}: out of memory while allocating the KV cache", flush=True)
        sys.exit(3)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *a):
            pass

    class Server(socketserver.UnixStreamServer):
        def get_request(self):
            request, _ = super().get_request()
            return request, ("local", 0)

    Server(socket_path, Health).serve_forever()
''')


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    logs: list[str] = []
    pb_utils = types.ModuleType("triton_python_backend_utils")
    pb_utils.Logger = types.SimpleNamespace(log_warn=logs.append, log_error=logs.append, log_info=logs.append)  # type: ignore[attr-defined]

    class MetricFamily:  # what the engine watch republishes its gauges through (Triton's metrics API)
        GAUGE = "gauge"

        def __init__(self, **_: Any) -> None:
            pass

        def Metric(self, labels: dict[str, str]) -> Any:  # noqa: N802 (Triton's name)
            return types.SimpleNamespace(set=lambda value: None)

    pb_utils.MetricFamily = MetricFamily  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb_utils)
    spec = importlib.util.spec_from_file_location("vllm_runner_under_test", RUNNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "_START_TIMEOUT_S", 30.0)
    (tmp_path / "engine.py").write_text(ENGINE)
    # The runner runs `python -m vllm.entrypoints.openai.api_server …`: a package of that name here.
    package = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for level in (package, package.parent, package.parent.parent):
        (level / "__init__.py").write_text("")
    (package / "api_server.py").write_text(ENGINE)
    monkeypatch.setenv("APPLIANCE_VLLM_PYTHON", sys.executable)
    monkeypatch.setenv("APPLIANCE_VLLM_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    monkeypatch.setenv("FAKE_ENGINE_COUNTER", str(tmp_path / "starts"))
    return types.SimpleNamespace(module=module, logs=logs, tmp=tmp_path)


def _config(argvs: dict[str, list[str]]) -> str:
    """A model config as the control plane writes it: each version's engine command line by number."""
    return json.dumps({"parameters": {"engine_argv": {"string_value": json.dumps(argvs)},
                                      "engine_env": {"string_value": json.dumps({v: {} for v in argvs})}}})  # fmt: skip


def _model(runner: Any, version: str = "1", argvs: dict[str, list[str]] | None = None) -> Any:
    model = runner.module.TritonPythonModel()
    model.initialize({"model_config": _config(argvs or {"1": []}), "model_repository": str(runner.tmp),
                      "model_version": version, "model_name": "smol", "model_instance_kind": "CPU"})  # fmt: skip
    return model


def test_each_version_starts_its_engine_with_its_own_command_line(runner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The config is the model's, shared by its versions: a canary's fp32 weights must not start
    the resident bf16 version's engine as fp32 (twice the memory placement counted)."""
    monkeypatch.setenv("FAKE_ENGINE_FAILS", "0")
    model = _model(runner, "2", {"1": ["--dtype", "bfloat16"], "2": ["--dtype", "float32"]})
    try:
        assert model._command[-2:] == ["--dtype", "float32"]
    finally:
        model.finalize()
    with pytest.raises(RuntimeError, match="the config names no engine command line for version 3"):
        _model(runner, "3", {"1": [], "2": []})


def test_an_engine_that_dies_while_starting_gets_one_more_start(runner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_ENGINE_FAILS", "1")
    model = _model(runner)
    try:
        assert (runner.tmp / "starts").read_text() == "2" and model.engine.poll() is None
        assert any("exited with 3" in line and "starting the engine once more" in line for line in runner.logs)
    finally:
        model.finalize()
    assert model.engine.poll() is not None  # stopped with the version


def test_an_engine_that_dies_twice_fails_the_load_with_its_last_words(runner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_ENGINE_FAILS", "2")
    with pytest.raises(RuntimeError, match="exited with 3.*out of memory while allocating the KV cache"):
        _model(runner)
    assert (runner.tmp / "starts").read_text() == "2"  # two starts, no more


def test_the_engine_runs_on_the_device_triton_gave_among_those_triton_sees(runner: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Triton numbers the devices it sees: the Triton of a MIG slice sees only that slice (its
    CUDA_VISIBLE_DEVICES is the slice's MIG uuid), so its device 0 is the slice, not GPU 0."""
    visible = runner.module.visible_device
    assert visible("", 1) == "1"  # a Triton that sees every GPU: device N is GPU N
    assert visible("MIG-4f2c", 0) == "MIG-4f2c"
    assert visible("2,3", 1) == "3"
    with pytest.raises(RuntimeError, match=r"Triton gave device 1, but it sees only 1 \(MIG-4f2c\)"):
        visible("MIG-4f2c", 1)

    monkeypatch.setenv("FAKE_ENGINE_FAILS", "0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-4f2c")
    model = runner.module.TritonPythonModel()
    model.initialize({"model_config": _config({"1": []}), "model_repository": str(runner.tmp),
                      "model_version": "1", "model_name": "smol", "model_instance_kind": "GPU",
                      "model_instance_device_id": "0"})  # fmt: skip
    try:
        assert model._env["CUDA_VISIBLE_DEVICES"] == "MIG-4f2c"
        assert (runner.tmp / "starts").read_text() == "1" and model.engine.poll() is None
    finally:
        model.finalize()
