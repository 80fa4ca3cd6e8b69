"""The agent converges a model's directory with one writer at a time (agent/sync.py)."""

from __future__ import annotations

import threading
from pathlib import Path

from appliance.agent import sync


def test_one_writer_per_model_directory_and_others_go_on(tmp_path: Path) -> None:
    """A MIG reconfiguration's reload and the new Triton's after-start reload wrote the same
    version directory at once; the second writer now waits for the first."""
    seen: dict[str, bool] = {}

    def other_thread() -> None:
        same = sync._locks[(tmp_path, "digits")]
        seen["same model"] = same.acquire(blocking=False)
        with sync._one_writer(tmp_path, "embed"):  # another model of the same Triton is not held up
            seen["other model"] = True
        with sync._one_writer(tmp_path / "mig", "digits"):  # the same model on another Triton neither
            seen["other triton"] = True

    with sync._one_writer(tmp_path, "digits"):
        with sync._one_writer(tmp_path, "digits"):  # the same thread may nest (load_model writes)
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join(timeout=10)
    assert seen == {"same model": False, "other model": True, "other triton": True}
    assert sync._locks[(tmp_path, "digits")].acquire(blocking=False), "let go after the writer"
