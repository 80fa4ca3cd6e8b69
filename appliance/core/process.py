"""Child processes that must not outlive the process that started them."""

from __future__ import annotations

import shutil

_SETPRIV = shutil.which("setpriv")


def with_parent_death_signal(argv: list[str]) -> list[str]:
    """If the parent is killed outright, the child must not linger holding ports (a node
    agent's Triton, the gateway's native front). Not with a preexec_fn: the parent has
    gRPC threads, and Python code between fork and exec can then crash it (gRPC skips its
    fork handlers). util-linux's setpriv sets the parent-death signal, then execs."""
    return [_SETPRIV, "--pdeathsig", "TERM", *argv] if _SETPRIV else argv
