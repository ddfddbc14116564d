"""What the CPU can do, read once: native bfloat16 arithmetic and the cores this process may use.

``dtype: auto`` and ``threads: auto`` resolve here. bfloat16 halves the weights' memory
traffic, which pays only where the CPU computes in bfloat16 natively (x86 ``avx512_bf16`` or
``amx_bf16``, Arm ``bf16``); elsewhere every bfloat16 matrix product is converted on the fly,
and on an AVX2-only x86 machine measured here a bfloat16 prefill took about 4.7x as long as a
float32 one (a whole request about 3x). Nothing here imports PyTorch.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

#: CPU flags (``/proc/cpuinfo``) that mean bfloat16 matrix arithmetic in hardware.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor in a ``/proc/cpuinfo`` text (x86 ``flags``,
    Arm ``Features``); empty when there are none."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


@lru_cache(maxsize=1)
def native_bfloat16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (False when it cannot be told)."""
    try:
        text = Path(cpuinfo_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return bool(cpu_flags(text) & BF16_FLAGS)


def resolve_dtype(dtype: str) -> str:
    """``auto`` -> ``bfloat16`` where the CPU computes it natively, else ``float32``; an
    explicit ``bfloat16`` or ``float32`` stays as given."""
    if dtype == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"dtype must be 'auto', 'bfloat16' or 'float32', got {dtype!r}")
    return dtype


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's control group in CPUs (cgroup v2 ``cpu.max`` or v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), or None when there is none. A container
    limited to 2 CPUs on a 64-core host sees 64 cores but gets the time of 2."""
    base = Path(root)
    try:
        quota, _, period = (base / "cpu.max").read_text().partition(" ")
        if quota.strip() != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((base / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((base / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cpus() -> int:
    """The threads a model should use by default: the CPUs this process may run on, capped by
    its control group's quota (at least 1). More threads than that only wait for each other."""
    cpus = available_cpus()
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, int(limit)))
    return max(1, cpus)
