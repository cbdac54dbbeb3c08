"""The training precision guard: bfloat16 on a CPU that would emulate it is called out, with what to set instead."""

from __future__ import annotations

import logging

import keras
import pytest

from imgclf.training import recipe

# First lines of real /proc/cpuinfo texts, shortened: an AVX2-only EPYC (bfloat16 emulated), an AVX-512 BF16 EPYC,
# a Sapphire Rapids Xeon (AMX) and an Arm Neoverse V1 (Graviton3, "bf16" among its features).
AVX2_EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx fma avx2 bmi2\n"
AVX512_BF16_EPYC = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
AMX_XEON = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n"
ARM_V1 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve i8mm bf16 dcpop\n"


def cpu_only() -> list[str]:
    return ["cpu:0"]


def never_asked() -> list[str]:
    raise AssertionError("the devices were listed although the CPU's flags decided")


def test_cpu_flags_reads_x86_and_arm_and_nothing_elsewhere():
    assert recipe.cpu_flags(AVX2_EPYC) == frozenset({"fpu", "sse", "sse2", "avx", "fma", "avx2", "bmi2"})
    assert "bf16" in recipe.cpu_flags(ARM_V1)
    assert recipe.cpu_flags("") is None
    assert recipe.cpu_flags("processor\t: 0\nmodel name\t: something\n") is None


def test_bfloat16_on_a_cpu_without_bfloat16_instructions_says_what_to_set():
    warning = recipe.emulated_precision_warning("mixed_bfloat16", flags=recipe.cpu_flags(AVX2_EPYC),
                                                list_devices=cpu_only)
    assert warning is not None
    assert "emulated" in warning and "training.precision=float32" in warning


@pytest.mark.parametrize("cpuinfo", [AVX512_BF16_EPYC, AMX_XEON, ARM_V1])
def test_bfloat16_instructions_are_native(cpuinfo):
    assert recipe.emulated_precision_warning("mixed_bfloat16", flags=recipe.cpu_flags(cpuinfo),
                                             list_devices=never_asked) is None


@pytest.mark.parametrize("devices", [["gpu:0"], ["tpu:0", "tpu:1"]])
def test_an_accelerator_computes_bfloat16_whatever_the_cpu(devices):
    assert recipe.emulated_precision_warning("mixed_bfloat16", flags=recipe.cpu_flags(AVX2_EPYC),
                                             list_devices=lambda: devices) is None


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_other_precisions_and_unknown_cpus_are_not_judged(precision):
    assert recipe.emulated_precision_warning(precision, flags=recipe.cpu_flags(AVX2_EPYC),
                                             list_devices=never_asked) is None
    assert recipe.emulated_precision_warning("mixed_bfloat16", flags=None, list_devices=never_asked) is None


def test_set_precision_warns_and_still_sets_the_policy(tmp_path, caplog):
    if not all(device.startswith("cpu") for device in keras.distribution.list_devices()):
        pytest.skip("an accelerator is visible: bfloat16 is native whatever the CPU")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(AVX2_EPYC)
    try:
        with caplog.at_level(logging.WARNING, logger=recipe.log.name):
            recipe.set_precision("mixed_bfloat16", cpuinfo_path=cpuinfo)
        assert keras.mixed_precision.dtype_policy().name == "mixed_bfloat16"
        assert "bfloat16 runs emulated" in caplog.text
        caplog.clear()
        cpuinfo.write_text(AVX512_BF16_EPYC)
        with caplog.at_level(logging.WARNING, logger=recipe.log.name):
            recipe.set_precision("mixed_bfloat16", cpuinfo_path=cpuinfo)
        assert "emulated" not in caplog.text
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
