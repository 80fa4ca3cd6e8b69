"""The MIG planner: a layout (profile names for one GPU) → explicit placements, or why not.

A layout is valid only if every instance gets an allowed start and no two overlap
in memory slices, the per-profile maxima hold, compute slices suffice, and at
most one instance has media extensions (+me). Placements are always chosen here,
never left to the driver: driver-chosen placement fragments (the MIG guide's
1g,1g,2g,3g example fails unless 3g is placed first).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

from appliance.nodes.mig.catalog import GpuModel, Profile


@dataclass(frozen=True)
class Placement:
    profile: str
    start: int
    size: int

    @property
    def slices(self) -> range:
        return range(self.start, self.start + self.size)

    def __str__(self) -> str:
        return f"{self.profile}@{self.start}"


@dataclass(frozen=True)
class Plan:
    ok: bool
    placements: tuple[Placement, ...] = ()  # in the order the layout listed the profiles
    reason: str = ""


def _search(profiles: Sequence[Profile], used: int = 0) -> list[int] | None:
    """Starts for each profile (bitmask of used memory slices), largest first; None if impossible."""
    if not profiles:
        return []
    head, rest = profiles[0], profiles[1:]
    for start in head.starts:
        mask = ((1 << head.memory_slices) - 1) << start
        if used & mask:
            continue
        tail = _search(rest, used | mask)
        if tail is not None:
            return [start, *tail]
    return None


def _order(profiles: Sequence[Profile]) -> list[int]:
    # Largest first, then the most constrained: the order mig-parted also uses, and it prunes early.
    return sorted(range(len(profiles)), key=lambda i: (-profiles[i].memory_slices, len(profiles[i].starts), i))


def _place(profiles: Sequence[Profile]) -> list[int] | None:
    order = _order(profiles)
    found = _search([profiles[i] for i in order])
    if found is None:
        return None
    starts = [0] * len(profiles)
    for index, start in zip(order, found, strict=True):
        starts[index] = start
    return starts


def _describe(profile: Profile) -> str:
    starts = ",".join(str(s) for s in profile.starts)
    return f"{profile.name} (starts {{{starts}}}, {profile.memory_slices} memory slice{'s' if profile.memory_slices > 1 else ''})"


def plan(gpu: GpuModel, layout: Sequence[str]) -> Plan:
    if not layout:
        return Plan(True, ())
    profiles: list[Profile] = []
    for name in layout:
        profile = gpu.profile(name)
        if profile is None:
            known = ", ".join(p.name for p in gpu.profiles)
            return Plan(False, reason=f"{name}: not a MIG profile of {gpu.name} (profiles: {known})")
        profiles.append(profile)
    for name, count in Counter(layout).items():
        limit = gpu.profile(name).max_count  # type: ignore[union-attr]
        if count > limit:
            return Plan(False, reason=f"{count} × {name} requested; {gpu.name} allows at most {limit}")
    media = [p.name for p in profiles if p.media_extensions]
    if len(media) > 1:
        return Plan(False, reason=f"only one instance per GPU can have media extensions (+me); layout has {len(media)}: {', '.join(media)}")
    compute = sum(p.compute_slices for p in profiles)
    if compute > gpu.compute_slices:
        return Plan(False, reason=f"layout needs {compute} compute slices; {gpu.name} has {gpu.compute_slices}")
    memory = sum(p.memory_slices for p in profiles)
    if memory > gpu.memory_slices:
        return Plan(False, reason=f"layout needs {memory} memory slices; {gpu.name} has {gpu.memory_slices}")
    starts = _place(profiles)
    if starts is None:
        return Plan(False, reason=_conflict(profiles))
    return Plan(True, tuple(Placement(p.name, s, p.memory_slices) for p, s in zip(profiles, starts, strict=True)))


def _conflict(profiles: Sequence[Profile]) -> str:
    """Names the smallest group of instances that cannot be placed together."""
    for size in range(2, len(profiles) + 1):
        for group in combinations(range(len(profiles)), size):
            if _place([profiles[i] for i in group]) is None:
                members = "; ".join(_describe(profiles[i]) for i in group)
                return f"no placement fits: these instances always overlap in memory slices: {members}"
    return "no placement fits"  # unreachable: the whole layout is such a group


def valid_placements(gpu: GpuModel, profile_name: str, occupied: Sequence[Placement]) -> list[int]:
    """Starts at which one more instance of profile_name fits beside `occupied`."""
    profile = gpu.profile(profile_name)
    if profile is None:
        return []
    used = 0
    for placement in occupied:
        used |= ((1 << placement.size) - 1) << placement.start
    return [s for s in profile.starts if not used & (((1 << profile.memory_slices) - 1) << s)]
