"""MIG GPU-instance profiles per GPU model: memory, SM count, maximum count and
allowed placements (start memory slice and size in memory slices).

Sources (see shared/reference/mig_and_triton.md, part A.1):
- NVIDIA MIG User Guide v580, "Supported MIG profiles" tables (names, counts, SMs);
- `nvidia-smi mig -lgip` / `-lgipp` captures for A100, H100-80GB, H100 NVL (ids,
  memory GiB, placements {0..6}:1, {0,2,4,6}:2, {0,2,4}:2, {0,4}:4, {0}:4, {0}:8);
- a public A30 console log for A30 placements ({0..3}:1, {0,2}:2, {0}:4);
- go-nvml GPU mocks for A100-80GB and H200 memory sizes (MB).
H200 and B200 placements, ids and SM counts are not published as captures: they
are taken to follow the H100 scheme (marked INFERRED). The nvml backend never
trusts this table for ids: it discovers profiles and placements on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

ANY_1 = tuple(range(7))  # {0..6}:1
EVEN_2 = (0, 2, 4, 6)  # {0,2,4,6}:2
TWO_G = (0, 2, 4)  # {0,2,4}:2
THREE_G = (0, 4)  # {0,4}:4
ZERO = (0,)


@dataclass(frozen=True)
class Profile:
    """One GPU-instance profile of one GPU model."""

    name: str
    nvsmi_id: int
    compute_slices: int  # the "Ng" in the name
    memory_slices: int  # size of the placement
    starts: tuple[int, ...]
    memory_gib: float
    sms: int | None
    max_count: int

    @property
    def media_extensions(self) -> bool:
        return self.name.endswith("+me")


@dataclass(frozen=True)
class GpuModel:
    name: str
    memory_slices: int
    compute_slices: int
    profiles: tuple[Profile, ...]
    inferred: bool = False  # placements/ids not confirmed by a capture
    compute_capability: str = ""  # CUDA compute capability: a TensorRT plan runs only where it was built

    def profile(self, name: str) -> Profile | None:
        return next((p for p in self.profiles if p.name == name), None)


def _hopper_like(prefix_gib: tuple[str, str, str, str, str], mem: tuple[float, float, float, float, float],
                 sms: tuple[int | None, ...]) -> tuple[Profile, ...]:  # fmt: skip
    """The seven-profile scheme shared by A100 and H100-class GPUs (8 memory, 7 compute slices)."""
    g1, g1x2, g2, g3, g7 = prefix_gib
    m1, m1x2, m3, m4, m7 = mem
    return (
        Profile(f"1g.{g1}", 19, 1, 1, ANY_1, m1, sms[0], 7),
        Profile(f"1g.{g1}+me", 20, 1, 1, ANY_1, m1, sms[0], 1),
        Profile(f"1g.{g1x2}", 15, 1, 2, EVEN_2, m1x2, sms[1], 4),
        Profile(f"2g.{g1x2}", 14, 2, 2, TWO_G, m1x2, sms[2], 3),
        Profile(f"3g.{g2}", 9, 3, 4, THREE_G, m3, sms[3], 2),
        Profile(f"4g.{g3}", 5, 4, 4, ZERO, m4, sms[4], 1),
        Profile(f"7g.{g7}", 0, 7, 8, ZERO, m7, sms[5], 1),
    )


GPU_MODELS: dict[str, GpuModel] = {
    "A100-40GB": GpuModel("A100-40GB", 8, 7, compute_capability="8.0", profiles=_hopper_like(
        ("5gb", "10gb", "20gb", "20gb", "40gb"), (4.75, 9.62, 19.50, 19.50, 39.25), (14, 14, 28, 42, 56, 98))),
    "A100-80GB": GpuModel("A100-80GB", 8, 7, compute_capability="8.0", profiles=_hopper_like(
        ("10gb", "20gb", "40gb", "40gb", "80gb"), (9.62, 19.50, 39.25, 39.25, 78.50), (14, 14, 28, 42, 56, 98))),
    "H100-80GB": GpuModel("H100-80GB", 8, 7, compute_capability="9.0", profiles=_hopper_like(
        ("10gb", "20gb", "40gb", "40gb", "80gb"), (9.75, 19.62, 39.50, 39.50, 79.25), (16, 26, 32, 60, 64, 132))),
    "H100-94GB": GpuModel("H100-94GB", 8, 7, compute_capability="9.0", profiles=_hopper_like(
        ("12gb", "24gb", "47gb", "47gb", "94gb"), (10.75, 21.62, 46.38, 46.38, 93.12), (16, 26, 32, 60, 64, 132))),
    # INFERRED placements/ids/SMs (H100 scheme); memory from go-nvml's H200 mock.
    "H200-141GB": GpuModel("H200-141GB", 8, 7, compute_capability="9.0", profiles=_hopper_like(
        ("18gb", "35gb", "71gb", "71gb", "141gb"), (18.0, 35.0, 71.0, 71.0, 141.0), (16, 26, 32, 60, 64, 132)),
        inferred=True),
    # INFERRED placements/ids; SM counts not published in our sources.
    "B200-180GB": GpuModel("B200-180GB", 8, 7, compute_capability="10.0", profiles=_hopper_like(
        ("23gb", "45gb", "90gb", "90gb", "180gb"), (23.0, 45.0, 90.0, 90.0, 180.0), (None,) * 6), inferred=True),
    "A30-24GB": GpuModel("A30-24GB", 4, 4, compute_capability="8.0", profiles=(
        Profile("1g.6gb", 14, 1, 1, (0, 1, 2, 3), 5.81, 14, 4),
        Profile("1g.6gb+me", 21, 1, 1, (0, 1, 2, 3), 5.81, 14, 1),
        Profile("2g.12gb", 5, 2, 2, (0, 2), 11.69, 28, 2),
        Profile("2g.12gb+me", 6, 2, 2, (0, 2), 11.69, 28, 1),
        Profile("4g.24gb", 0, 4, 4, ZERO, 23.44, 56, 1),
    )),
}  # fmt: skip


def gpu_model(name: str) -> GpuModel:
    try:
        return GPU_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown GPU model {name!r}; known: {', '.join(GPU_MODELS)}") from None


# NVML product names (nvmlDeviceGetName) → catalog model, matched on the memory size.
def model_for(product_name: str, memory_mib: int) -> str | None:
    name = product_name.upper()
    gib = memory_mib / 1024
    if "A30" in name:
        return "A30-24GB"
    if "A100" in name:
        return "A100-80GB" if gib > 60 else "A100-40GB"
    if "H200" in name:
        return "H200-141GB"
    if "B200" in name:
        return "B200-180GB"
    if "H100" in name:
        return "H100-94GB" if gib > 85 else "H100-80GB"
    return None
