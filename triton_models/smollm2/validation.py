"""Validation sets for the demo LLM (a generative model: text in, text out).

The prompts are short questions with the model's chat template applied (what a client of
Triton's vLLM backend sends as text_input). Two kinds of set, as the accuracy gate
takes them (appliance/optimisation/validation_data.py):

- `perplexity`: each question with a plain, correct reference answer written here. The
  gate measures how likely a version finds those answers; a child must not find them
  much less likely than its parent.
- `exact_match`: each question with the parent's own greedy answer (given by the caller,
  who asked the parent), which a child must reproduce.

`with_rope_theta` makes a child that should fail them (the end-to-end test and
bench/generative_gate.py use it).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence

import numpy as np

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# (question, a correct answer in one sentence)
FACTS: tuple[tuple[str, str], ...] = (
    ("What is the capital of France? Answer in one sentence.", "The capital of France is Paris."),
    ("What is the capital of Italy? Answer in one sentence.", "The capital of Italy is Rome."),
    ("What is the capital of Japan? Answer in one sentence.", "The capital of Japan is Tokyo."),
    ("How many days are in a week? Answer in one sentence.", "There are seven days in a week."),
    ("What colour is the sky on a clear day? Answer in one sentence.", "The sky is blue on a clear day."),
    ("What do bees make? Answer in one sentence.", "Bees make honey."),
    ("What is water made of? Answer in one sentence.", "Water is made of hydrogen and oxygen."),
    ("Which planet do we live on? Answer in one sentence.", "We live on the planet Earth."),
    ("What is the largest ocean on Earth? Answer in one sentence.", "The Pacific Ocean is the largest ocean on Earth."),
    ("How many legs does a spider have? Answer in one sentence.", "A spider has eight legs."),
    ("What is the freezing point of water in Celsius? Answer in one sentence.", "Water freezes at 0 degrees Celsius."),
    ("Who wrote Romeo and Juliet? Answer in one sentence.", "William Shakespeare wrote Romeo and Juliet."),
)


def chat(question: str) -> str:
    """The model's chat template applied to one user question (as an OpenAI-style front does)."""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")  # fmt: skip


def archive(prompts: Sequence[str], answers: Sequence[str]) -> bytes:
    """An .npz validation set: input.text_input and expected.text_output, string arrays."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{"input.text_input": np.array(list(prompts), dtype=np.str_),
                                   "expected.text_output": np.array(list(answers), dtype=np.str_)})  # fmt: skip
    return buffer.getvalue()


def perplexity_set(facts: Sequence[tuple[str, str]] = FACTS) -> bytes:
    return archive([chat(q) for q, _ in facts], [a for _, a in facts])


def exact_match_set(answers: Sequence[str], facts: Sequence[tuple[str, str]] = FACTS) -> bytes:
    """The questions of `facts` with the parent's own greedy answers to them (in that order)."""
    return archive([chat(q) for q, _ in facts], answers)


def with_rope_theta(artifact: bytes, theta: float) -> bytes:
    """The artifact with config.json's RoPE base changed: a conversion gone subtly wrong (the
    model still loads and answers, but sees positions differently). Same weights, same order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(artifact)) as source, tarfile.open(fileobj=out, mode="w") as target:
        for member in source:
            data = source.extractfile(member) if member.isfile() else None
            if member.name.removeprefix("./") == "config.json" and data is not None:
                config = json.loads(data.read())
                config["rope_parameters"]["rope_theta"] = theta
                body = json.dumps(config).encode()
                member.size = len(body)
                target.addfile(member, io.BytesIO(body))
            else:
                target.addfile(member, data)
    return out.getvalue()
