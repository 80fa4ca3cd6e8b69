"""A generative version judged on a validation set, with the engine that serves it.

The version's Hugging Face folder is unpacked into a scratch directory and served by
vLLM's OpenAI-compatible server from this host's vLLM environment (core/vllm_env.py),
with the command line and environment nodes get for it (catalog/generative.py:
`engine_command` from the model's serving profile: dtype, max model length, KV cache,
eager or compiled), on a Unix socket in a private directory. Nothing but this process
reaches it, and it is gone when the `with` block ends, however it ends (its process
group is stopped; the parent-death signal covers a killed worker).

Rows are sent one at a time, greedy: vLLM's numbers depend on how requests are batched
together, and the gate compares the parent and the candidate, so both must see the same
arithmetic. Validation sets are tens to hundreds of rows: one at a time costs seconds.

- `exact_match`: each prompt's greedy answer, generated up to one token past the
  reference answer's own length, equals the reference (whitespace-normalised); an answer
  still running at that limit matches when it begins with the reference.
- `perplexity`: exp of the mean negative log-likelihood, over every token of every
  reference answer, of that token given the prompt and the answer before it (vLLM's
  prompt log-probabilities of prompt + answer; the answer's tokens are those after the
  prompt's own tokenisation).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.catalog.artifacts import unpack_into
from appliance.catalog.choices import ArtifactFormat
from appliance.catalog.generative import engine_command
from appliance.core.process import ProcessTree
from appliance.core.vllm_env import engine_build, engine_python
from appliance.optimisation.validation_data import TEXT_INPUT, TEXT_OUTPUT, ValidationData

SERVED_NAME = "engine"
_REQUEST_TIMEOUT_S = 600.0


class EngineError(RuntimeError):
    """The engine could not start or answered what the gate cannot use; the message says why."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def engine_description() -> str:
    """"vLLM <version> (<build>)" of this host's vLLM environment, or why there is none."""
    python = engine_python()
    if python is None:
        return "no vLLM environment"
    site = sorted((python.parent.parent / "lib").glob("python3*/site-packages"))
    found = sorted(site[0].glob("vllm*.dist-info")) if site else []
    version = found[0].name.removesuffix(".dist-info").split("-", 1)[-1] if found else "unknown version"
    return f"vLLM {version} ({engine_build(python).upper()})"


@dataclass
class Engine:
    """One generative version served privately for as long as the `with` block lasts."""

    artifact: bytes
    facts: dict[str, Any]
    engine: dict[str, Any]  # generative.engine_spec of the model's serving profile
    workdir: Path
    start_timeout_s: float = 900.0
    tree: ProcessTree | None = None
    _runtime: Path | None = field(default=None, repr=False)

    @property
    def socket_path(self) -> str:
        assert self._runtime is not None
        return str(self._runtime / "engine.sock")

    @property
    def log_path(self) -> Path:
        return self.workdir / "engine.log"

    def __enter__(self) -> Engine:
        python = engine_python()
        if python is None:
            raise EngineError("this host has no vLLM environment (make vllm-env, or APPLIANCE_VLLM_PYTHON): "
                              "a generative version is measured with the engine that serves it")  # fmt: skip
        if engine_build(python) != "cpu":
            raise EngineError("this host's vLLM is the CUDA build: the gate measures generative versions on the "
                              "optimiser's CPU (a GPU node's own measurement is not built)")  # fmt: skip
        shutil.rmtree(self.workdir, ignore_errors=True)
        try:
            model_dir = self.workdir / "model"
            unpack_into(self.artifact, ArtifactFormat.VLLM, model_dir)
            # Unix socket paths are limited to 107 bytes: a short private directory (mkdtemp: 0700).
            self._runtime = Path(tempfile.mkdtemp(prefix="appliance-gate-"))
            argv, extra = engine_command(self.facts, self.engine)
            env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
            env.update(extra)
            env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                        "DO_NOT_TRACK": "1"})  # fmt: skip
            command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                       "--served-model-name", SERVED_NAME, "--uds", self.socket_path, "--disable-uvicorn-access-log",
                       *argv]  # fmt: skip
            self.tree = ProcessTree(name="vLLM engine of a gate run", argv=command, env=env, log_path=self.log_path)
            if not self.tree.start_ready(self._healthy, timeout=self.start_timeout_s, interval=0.5):
                raise EngineError(f"the vLLM engine did not start (exit status {self.tree.returncode}): "
                                  f"{self.log_tail()}")  # fmt: skip
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.tree is not None:
            self.tree.stop(timeout=15)
            self.tree = None
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-1500:]
        except OSError:
            return "(no log)"

    def _healthy(self) -> bool:
        try:
            conn = _UnixConnection(self.socket_path, timeout=5)
            conn.request("GET", "/health")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One JSON request to the engine; an error answer raises EngineError with its message."""
        conn = _UnixConnection(self.socket_path, timeout=_REQUEST_TIMEOUT_S)
        try:
            conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            text = response.read().decode("utf-8", errors="replace")
        except OSError as exc:
            raise EngineError(f"the engine did not answer {path}: {exc}; {self.log_tail()}") from exc
        finally:
            conn.close()
        if response.status != 200:
            raise EngineError(f"the engine answered {path} with {response.status}: {text[:500]}")
        answer: dict[str, Any] = json.loads(text)
        return answer

    def tokens(self, text: str, *, special: bool) -> list[int]:
        """The engine's own tokenisation of `text` (with the tokenizer's special tokens, as a
        prompt gets them, or without, as a continuation)."""
        answer = self.post("/tokenize", {"model": SERVED_NAME, "prompt": text, "add_special_tokens": special})
        return [int(t) for t in answer["tokens"]]


def normalised(text: str) -> str:
    """What exact match compares: the text with its runs of whitespace made one space, trimmed."""
    return " ".join(text.split())


def exact_match(engine: Engine, prompts: list[str], answers: list[str]) -> dict[str, float]:
    matched = 0
    for prompt, answer in zip(prompts, answers, strict=True):
        limit = len(engine.tokens(answer, special=False)) + 1
        choice = engine.post("/v1/completions", {"model": SERVED_NAME, "prompt": prompt, "max_tokens": limit,
                                                 "temperature": 0})["choices"][0]  # fmt: skip
        said, wanted = normalised(choice["text"]), normalised(answer)
        matched += said == wanted or (choice.get("finish_reason") == "length" and said.startswith(wanted))
    return {"exact_match": matched / len(prompts)}


def perplexity(engine: Engine, prompts: list[str], answers: list[str]) -> dict[str, float]:
    total_nll, counted = 0.0, 0
    for row, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        whole = engine.tokens(prompt + answer, special=True)
        own = engine.tokens(prompt, special=True)
        # The answer's tokens start where the whole text's tokenisation leaves the prompt's own
        # (a token merging across the seam belongs to the answer).
        start = next((i for i, (a, b) in enumerate(zip(own, whole, strict=False)) if a != b), min(len(own), len(whole)))
        start = max(start, 1)  # the first token has no log-probability: nothing comes before it
        if start >= len(whole):
            raise EngineError(f"row {row}: the reference answer adds no token to its prompt")
        choice = engine.post("/v1/completions", {"model": SERVED_NAME, "prompt": whole, "max_tokens": 1,
                                                 "temperature": 0, "prompt_logprobs": 0})["choices"][0]  # fmt: skip
        logprobs = choice.get("prompt_logprobs")
        if not isinstance(logprobs, list) or len(logprobs) != len(whole):
            raise EngineError(f"row {row}: the engine gave {len(logprobs) if isinstance(logprobs, list) else 'no'} "
                              f"prompt log-probabilities for {len(whole)} tokens")  # fmt: skip
        for position in range(start, len(whole)):
            entry = logprobs[position] or {}
            found = entry.get(str(whole[position]))
            if not isinstance(found, dict) or not isinstance(found.get("logprob"), int | float):
                raise EngineError(f"row {row}: no log-probability for token {position} ({whole[position]})")
            # -inf (a token the model rules out) stays infinite: such a candidate fails any gate.
            total_nll -= float(found["logprob"])
            counted += 1
    return {"perplexity": math.exp(total_nll / counted) if total_nll / counted < 700 else math.inf,
            "answer_tokens": float(counted)}  # fmt: skip


def measure(engine: Engine, metric: str, data: ValidationData) -> dict[str, float]:
    """The metric's values for the engine's model on a generative validation set."""
    prompts = [str(p) for p in data.inputs[TEXT_INPUT]]
    answers = [str(a) for a in data.expected[TEXT_OUTPUT]]
    if metric == "exact_match":
        return exact_match(engine, prompts, answers)
    if metric == "perplexity":
        return perplexity(engine, prompts, answers)
    raise ValueError(f"{metric} is not a metric of generative models")
