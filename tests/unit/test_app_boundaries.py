"""Which app may import which, read from the source with `ast`: every import counts, the
ones inside functions included (a lazy import is still a dependency).

- `nodes` is below `rollouts`: rollouts imports nodes, never the reverse (nodes reads what
  runs on its nodes through nodes/workloads.py, which rollouts fills).
- The control plane never imports the node agent: it sends the agent's tasks by name
  (nodes/dispatch.py).
- The agent reaches the control plane's models, services and selectors only through
  agent/control.py, the seam a later agent API replaces.
"""

from __future__ import annotations

import ast
from pathlib import Path

APPLIANCE = Path(__file__).resolve().parents[2] / "appliance"

# What agent code other than control.py may import from outside the agent: libraries with no
# control-plane state (process supervision, settings helpers, the audit context, the node's
# inventory backends, the MIG catalog and planner) and choices (constants).
AGENT_MAY_IMPORT = (
    "appliance.core.", "appliance.celery", "appliance.audit.context", "appliance.audit.choices",
    "appliance.nodes.inventory", "appliance.nodes.mig", "appliance.nodes.choices", "appliance.rollouts.choices",
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(APPLIANCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, name: str = "") -> set[str]:
    """Every module a file (the module `name`, by default found from its path) imports,
    anywhere in it; relative imports resolved."""
    package = (name or module_name(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def sources(app: str) -> list[Path]:
    return sorted(p for p in (APPLIANCE / app).rglob("*.py") if "migrations" not in p.parts)


def offenders(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{path.relative_to(APPLIANCE.parent)} imports {module}"
        for path in paths
        for module in imported(path)
        if any(module == f or module.startswith(f"{f}.") for f in forbidden)
    )


def test_nodes_never_imports_rollouts_so_the_two_have_no_cycle() -> None:
    assert sources("nodes") and offenders(sources("rollouts"), ("appliance.nodes",)), "rollouts builds on nodes"
    assert offenders(sources("nodes"), ("appliance.rollouts",)) == []


def test_the_control_plane_never_imports_the_agent() -> None:
    apps = [p for p in APPLIANCE.iterdir() if p.is_dir() and (p / "__init__.py").exists() and p.name != "agent"]
    paths = [*(f for app in apps for f in sources(app.name)), *APPLIANCE.glob("*.py")]
    assert offenders(paths, ("appliance.agent",)) == []


def test_agent_code_reaches_the_control_plane_only_through_control_py() -> None:
    agent = [p for p in sources("agent") if p.name != "control.py"]
    assert APPLIANCE / "agent" / "tasks.py" in agent
    wrong = sorted(
        f"{path.relative_to(APPLIANCE.parent)} imports {module}"
        for path in agent
        for module in imported(path)
        if module.startswith("appliance.")
        and not module.startswith("appliance.agent")
        and not any(module == allowed or module.startswith(allowed) for allowed in AGENT_MAY_IMPORT)
    )
    assert wrong == []


def test_imports_inside_functions_and_relative_imports_are_seen(tmp_path: Path) -> None:
    """The checks above would pass vacuously if the reader missed the lazy imports they exist for."""
    probe = tmp_path / "probe.py"
    probe.write_text("def later():\n    from appliance.rollouts.models import Replica\n    from .models import Node\n"
                     "    import appliance.agent.tasks\n")  # fmt: skip
    found = imported(probe, "appliance.nodes.probe")
    assert {"appliance.rollouts.models", "appliance.nodes.models", "appliance.agent.tasks"} <= found
    assert "appliance.models" not in found
