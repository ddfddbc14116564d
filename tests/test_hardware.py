"""``dtype: auto`` and the default thread count: what the CPU can do, read from its files."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from guardrail import hardware
from guardrail.config import GuardrailConfig

EPYC_AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [(EPYC_AVX2, False), (SAPPHIRE_RAPIDS, True), (GRAVITON3, True), ("", False)],
)
def test_native_bfloat16_is_read_from_the_cpu_flags(
    tmp_path: Path, cpuinfo: str, native: bool
) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert hardware.native_bfloat16(str(path)) is native


def test_an_unreadable_cpuinfo_means_no_native_bfloat16(tmp_path: Path) -> None:
    assert hardware.native_bfloat16(str(tmp_path / "missing")) is False


def test_auto_follows_the_cpu_and_explicit_values_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "native_bfloat16", lambda: False)
    assert hardware.resolve_dtype("auto") == "float32"
    assert GuardrailConfig().resolved_dtype() == "float32"
    monkeypatch.setattr(hardware, "native_bfloat16", lambda: True)
    assert hardware.resolve_dtype("auto") == "bfloat16"
    assert hardware.resolve_dtype("float32") == "float32"
    assert GuardrailConfig(dtype="bfloat16").resolved_dtype() == "bfloat16"
    with pytest.raises(ValueError, match="'auto', 'bfloat16' or 'float32', got 'float16'"):
        hardware.resolve_dtype("float16")
    with pytest.raises(ValidationError, match="dtype"):
        GuardrailConfig(dtype="float16")  # type: ignore[arg-type]


def test_the_cgroup_quota_caps_the_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert hardware.cgroup_cpu_limit(str(v2)) == pytest.approx(1.5)
    (v2 / "cpu.max").write_text("max 100000\n")
    assert hardware.cgroup_cpu_limit(str(v2)) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert hardware.cgroup_cpu_limit(str(v1)) == pytest.approx(4.0)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert hardware.cgroup_cpu_limit(str(v1)) is None
    assert hardware.cgroup_cpu_limit(str(tmp_path / "none")) is None

    monkeypatch.setattr(hardware, "available_cpus", lambda: 64)
    monkeypatch.setattr(hardware, "cgroup_cpu_limit", lambda: 2.0)
    assert hardware.usable_cpus() == 2  # a 2-CPU container on a 64-core host
    monkeypatch.setattr(hardware, "cgroup_cpu_limit", lambda: 0.5)
    assert hardware.usable_cpus() == 1
    monkeypatch.setattr(hardware, "cgroup_cpu_limit", lambda: None)
    assert hardware.usable_cpus() == 64


def test_this_machine_resolves_to_something_runnable() -> None:
    assert hardware.resolve_dtype("auto") in ("bfloat16", "float32")
    assert 1 <= hardware.usable_cpus() <= hardware.available_cpus()
