"""machine.py: what every speed figure names beside it, read from /proc/cpuinfo's fields and PyTorch."""

import os
import subprocess
import sys

import pytest
import torch

from alexnet.machine import EXTENSIONS, cpu_extensions, cpu_name, describe, one_line
from alexnet.precision import cpu_has_bf16

ZEN3 = {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "1", "model name": "AMD EPYC 7763 64-Core Processor",
        "flags": "fpu sse sse2 avx avx2 fma bmi2 sha_ni"}
ZEN4 = dict(ZEN3, model="17", **{"model name": "AMD EPYC", "flags": "avx avx2 fma avx512f avx512_vnni avx512_bf16"})
INTEL = {"vendor_id": "GenuineIntel", "cpu family": "6", "model": "143",
         "model name": "Intel(R) Xeon(R) Platinum 8480+", "flags": "avx2 fma avx512f amx_bf16 amx_int8 avx512_bf16"}
GRAVITON = {"Features": "fp asimd evtstrm aes sve bf16"}


def test_cpu_names_say_the_core_where_the_model_name_does_not():
    # Virtual machines often report "AMD EPYC" or "Intel(R) Xeon(R) Processor" alone; AMD's family 25 is Zen 3 or
    # Zen 4, told apart by AVX-512; Intel's family 6 models name the core.
    assert cpu_name(ZEN3) == "AMD EPYC 7763 64-Core Processor (family 25, model 1: Zen 3)"
    assert cpu_name(ZEN4) == "AMD EPYC (family 25, model 17: Zen 4)"
    assert cpu_name(INTEL) == "Intel(R) Xeon(R) Platinum 8480+ (family 6, model 143: Sapphire Rapids)"
    hidden = dict(INTEL, model="207", **{"model name": "Intel(R) Xeon(R) Processor"})
    assert cpu_name(hidden) == "Intel(R) Xeon(R) Processor (family 6, model 207: Emerald Rapids)"
    assert cpu_name(dict(INTEL, model="999")) == "Intel(R) Xeon(R) Platinum 8480+ (family 6, model 999)"
    assert cpu_name(GRAVITON)   # no model name: still a name, never an error


def test_extensions_are_the_ones_that_decide_speed_in_a_fixed_order():
    assert cpu_extensions(ZEN3) == ["avx2", "fma"]
    assert cpu_extensions(ZEN4) == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert cpu_extensions(INTEL) == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8"]
    assert cpu_extensions(GRAVITON) == ["asimd", "sve", "bf16"]   # ARM lists them under "Features"
    assert cpu_extensions({}) == []
    assert set(cpu_extensions(INTEL)) <= set(EXTENSIONS)


def test_this_machine_described_as_pytorch_sees_it():
    facts = describe(torch.device("cpu"), "fp32")
    assert facts["threads"] == torch.get_num_threads() and facts["precision"] == "fp32"
    assert facts["kernels"] == torch.backends.cpu.get_cpu_capability() and facts["native_bf16"] == cpu_has_bf16()
    assert facts["accelerator"] is None
    line = one_line(facts)
    assert facts["cpu"] in line and "precision fp32" in line and f"PyTorch kernels {facts['kernels']}" in line
    assert len(line.splitlines()) == 1


def test_caps_on_the_kernel_libraries_instructions_are_named(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2")
    line = one_line(describe(torch.device("cpu"), "fp32"))
    assert "oneDNN up to AVX2" in line and "fbgemm (int8) AVX2" in line
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.delenv("FBGEMM_ENABLE_INSTRUCTIONS")
    line = one_line(describe(torch.device("cpu"), "fp32"))
    assert "oneDNN" not in line and "fbgemm" not in line


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or os.cpu_count() < 2, reason="needs Linux and 2 CPUs")
def test_usable_cores_are_the_ones_the_process_is_bound_to():
    # A process bound to one core (taskset, a SLURM job's cpuset) sees the machine's count in os.cpu_count().
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from alexnet.cores import usable_cores; print(usable_cores(), os.cpu_count())")
    one, machine = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout.split())
    assert one == 1 and machine == os.cpu_count() >= 2
