"""What a measurement ran on: CPU model and the instruction sets that decide INT8 speed, cores,
threads, library versions and the date. Every generated table carries this line, so a number in
the README can be traced to a machine (the README's rule: detect, never assume)."""

from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

# The flags that change which kernels run: AVX2 / AVX-512 float paths, VNNI integer dot products
# (full-range INT8 weights), AMX tiles.
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
LIBRARIES = ("paddlepaddle", "onnxruntime", "onnxruntime-gpu", "numpy", "ernie-compress")


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.machine())
    flags = next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())
    return model, flags


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_has_vnni() -> bool:
    """True where the CPU has AVX512-VNNI or AVX-VNNI (full-range s8 weights are then safe)."""
    _, flags = _cpuinfo()
    return bool(flags & {"avx512_vnni", "avx_vnni"})


def machine_info(threads: int | None = None) -> dict[str, Any]:
    model, flags = _cpuinfo()
    return {"cpu": model, "flags": [f for f in FLAGS if f in flags], "cores": os.cpu_count(),
            "threads": threads, "python": platform.python_version(),
            "libraries": {name: v for name in LIBRARIES if (v := _version(name))},
            "date": datetime.date.today().isoformat()}


def machine_line(info: dict[str, Any]) -> str:
    """One Markdown line: ``Intel Xeon ... (avx2, avx512_vnni), 2 cores, 2 threads; paddlepaddle 3.3.1, ...``."""
    flags = ", ".join(info["flags"]) or "no AVX2"
    threads = f", {info['threads']} threads" if info.get("threads") else ", threads: the runtime's default (one per core)"
    libraries = ", ".join(f"{k} {v}" for k, v in info["libraries"].items())
    return (f"Machine: {info['cpu']} ({flags}), {info['cores']} cores{threads}; Python {info['python']}, "
            f"{libraries}; {info['date']}.")


def peak_resident_bytes() -> int:
    """The most memory this process has held so far (the OS's maximum resident set size), in bytes."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
