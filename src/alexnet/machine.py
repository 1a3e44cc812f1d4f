"""What a speed figure was measured on: the processor, the vector instructions PyTorch uses on it, the
precision, the accelerator. Every `alexnet bench` report carries it, because the same code runs at
different multiples of its baseline on an AVX-512/bf16 CPU and an AVX2-only one.

    describe(torch.device("cpu"), "fp32")
    {"cpu": "AMD EPYC (family 25, model 17: Zen 4)", "threads": 2, "extensions": ["avx2", "avx512f", ...],
     "kernels": "AVX2", "native_bf16": False, "precision": "fp32", "accelerator": None}

"kernels" is the instruction set PyTorch's own CPU kernels run with (ATEN_CPU_CAPABILITY can lower it),
which may be less than what the processor has.
"""

from __future__ import annotations

import os
import platform

import torch

from alexnet.precision import cpu_has_bf16

# The flags that decide how fast this project's CPU paths are, in /proc/cpuinfo's spelling.
EXTENSIONS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8",
              "asimd", "sve", "bf16")
# AMD's families by (family, whether AVX-512 is present): the model numbers overlap within family 25.
_AMD_CORES = {(23, False): "Zen/Zen 2", (25, False): "Zen 3", (25, True): "Zen 4", (26, True): "Zen 5"}
# Intel's server cores by model number (family 6), for the virtual machines that say "Intel(R) Xeon(R) Processor".
_INTEL_CORES = {85: "Skylake/Cascade Lake", 106: "Ice Lake", 143: "Sapphire Rapids", 207: "Emerald Rapids",
                173: "Granite Rapids", 175: "Sierra Forest"}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none: macOS, Windows)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_name(info: dict[str, str] | None = None) -> str:
    info = _cpuinfo() if info is None else info
    model = info.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    flags = set(info.get("flags", "").split())
    family, number = info.get("cpu family", ""), info.get("model", "")
    if info.get("vendor_id") == "AuthenticAMD" and family.isdigit():
        core = _AMD_CORES.get((int(family), "avx512f" in flags))
        return f"{model} (family {family}, model {number}" + (f": {core})" if core else ")")
    if info.get("vendor_id") == "GenuineIntel" and family == "6" and number.isdigit():
        core = _INTEL_CORES.get(int(number))
        return f"{model} (family 6, model {number}" + (f": {core})" if core else ")")
    return model


def cpu_extensions(info: dict[str, str] | None = None) -> list[str]:
    info = _cpuinfo() if info is None else info
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return [e for e in EXTENSIONS if e in flags]


def describe(device: torch.device, precision: str) -> dict:
    """The facts a reader needs to compare a figure with their own machine's."""
    info = _cpuinfo()
    facts = {"cpu": cpu_name(info), "threads": torch.get_num_threads(), "extensions": cpu_extensions(info),
             "kernels": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_bf16(),
             "precision": precision, "accelerator": None}
    # Caps a user may set on the kernel libraries' own choice of instructions (oneDNN: convolutions and
    # products; fbgemm: int8), which decide the figures as much as the CPU does.
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        facts["onednn_max_isa"] = os.environ["ONEDNN_MAX_CPU_ISA"]
    if os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS"):
        facts["fbgemm_isa"] = os.environ["FBGEMM_ENABLE_INSTRUCTIONS"]
    if device.type == "cuda":
        facts["accelerator"] = torch.cuda.get_device_name(device)
    return facts


def one_line(facts: dict) -> str:
    """describe()'s facts as the line printed under every benchmark."""
    extensions = ", ".join(facts["extensions"]) or "no vector extensions known here"
    threads = f"{facts['threads']} thread{'' if facts['threads'] == 1 else 's'}"
    line = (f"{facts['cpu']}, {threads} [{extensions}]; PyTorch kernels {facts['kernels']}"
            + (f", oneDNN up to {facts['onednn_max_isa']}" if facts.get("onednn_max_isa") else "")
            + (f", fbgemm (int8) {facts['fbgemm_isa']}" if facts.get("fbgemm_isa") else "")
            + f", native bf16 {'yes' if facts['native_bf16'] else 'no'}; precision {facts['precision']}")
    return line + (f"; on {facts['accelerator']}" if facts["accelerator"] else "")
