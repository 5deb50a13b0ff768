"""Which device and precision this process computes on, and autocast for them.

A GPU job must never train on the CPU (~50x slower) without anyone noticing, so the choice starts from
whether this container was given an NVIDIA GPU and, when CUDA cannot use it, why.

A GPU was given when the container runtime put NVIDIA device files into /dev (`docker run --gpus`,
the NVIDIA container toolkit, SageMaker and Vertex GPU hosts) or when the platform says the machine
has one (`runtime.declared_gpu`: the SageMaker instance type). NVIDIA_VISIBLE_DEVICES is no signal:
CUDA base images set it on every host. When CUDA still cannot be used, the usual cause is a driver
older than the one PyTorch's CUDA build needs; the host's driver version is in
/proc/driver/nvidia/version (the kernel module's, visible in any container on that host).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .distributed import World
from .errors import DeviceError, SettingsError

DEVICE_DIR = Path("/dev")
DEVICE_NAME = re.compile(r"nvidia\d+")  # one per GPU; nvidiactl and nvidia-uvm come with any driver
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
# The oldest driver that runs any CUDA release of a major version (minor version compatibility), from NVIDIA's
# "CUDA Compatibility", Table 1: https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html
# PyTorch wheels carry their own CUDA runtime and rely on exactly this rule.
MIN_DRIVER = {13: 580, 12: 525, 11: 450}


@dataclass(frozen=True)
class Compute:
    """Where and how this process computes; travels as one through training, evaluation and prediction."""

    device: torch.device
    precision: str
    world: World = World()


@dataclass(frozen=True)
class Seen:
    """What this container shows of an NVIDIA GPU, independent of whether CUDA can use it."""

    devices: tuple[str, ...] = ()  # e.g. ("/dev/nvidia0",)
    driver: str | None = None  # the host's NVIDIA kernel module, e.g. "580.95.05"
    declared: str | None = None  # what the platform says, e.g. "SageMaker instance type ml.g5.xlarge"

    @property
    def given(self) -> bool:
        return bool(self.devices or self.declared)


def _driver_from_file(path: Path) -> str | None:
    """'NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug ...' or, for the open modules,
    'NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build ...' -> the version."""
    try:
        found = re.search(r"NVRM version:.*?\s(\d+\.\d+(?:\.\d+)?)\s", path.read_text(errors="replace"))
    except OSError:
        return None
    return found.group(1) if found else None


def _driver_from_nvidia_smi() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.match(r"\d+(?:\.\d+)+", done.stdout.strip()) if done.returncode == 0 else None
    return found.group(0) if found else None


def look(declared: str | None = None, device_dir: Path = DEVICE_DIR, driver_file: Path = DRIVER_VERSION_FILE,
         nvidia_smi: Callable[[], str | None] = _driver_from_nvidia_smi) -> Seen:
    """Read the signals; tests point the paths at temporary folders and pass their own nvidia-smi."""
    try:
        devices = tuple(sorted(str(p) for p in device_dir.iterdir() if DEVICE_NAME.fullmatch(p.name)))
    except OSError:
        devices = ()
    driver = _driver_from_file(driver_file)
    if driver is None and devices:  # some runtimes hide /proc/driver but mount the tools
        driver = nvidia_smi()
    return Seen(devices=devices, driver=driver, declared=declared)


def required_driver(torch_cuda: str | None) -> int | None:
    """The oldest driver branch for PyTorch's CUDA build ("13.0" -> 580), None when unknown."""
    if not torch_cuda:
        return None
    return MIN_DRIVER.get(int(torch_cuda.split(".")[0]))


def init_error() -> str | None:
    """PyTorch's own reason for not using CUDA (its message names the driver version it found), or None."""
    try:
        torch.cuda.init()
    except Exception as error:  # noqa: BLE001 - any reason is worth showing (AssertionError on CPU-only builds)
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return None


def unusable_reason(seen: Seen, torch_version: str, torch_cuda: str | None, error: str | None) -> str:
    """One line for the failure file: what was given, why CUDA cannot use it, and the two ways out."""
    given = seen.declared or " ".join(seen.devices)
    head = f"a GPU was given to this container ({given}) but CUDA cannot use it: "
    need = required_driver(torch_cuda)
    if torch_cuda is None:
        why = f"this PyTorch {torch_version} is a CPU-only build"
    elif seen.driver is None:
        why = (f"no NVIDIA driver is visible ({DRIVER_VERSION_FILE} missing; start the container with the NVIDIA "
               f"container toolkit, e.g. docker run --gpus all); PyTorch's CUDA {torch_cuda} build needs driver >= {need}")
    elif need is not None and int(seen.driver.split(".")[0]) < need:
        why = (f"NVIDIA driver {seen.driver} is older than the {need} that PyTorch {torch_version} "
               f"(CUDA {torch_cuda} build) needs; use a host or AMI with driver >= {need}")
    else:
        why = f"driver {seen.driver}, PyTorch {torch_version} (CUDA {torch_cuda}): {error or 'torch.cuda.is_available() is false'}"
    return head + why + "; set device=cpu to train on the CPU anyway"


def cpu_note(seen: Seen) -> str:
    """Why a device=auto job trains on the CPU: said at WARNING in job_start, with the likely cause."""
    if seen.driver is not None:
        return (f"no GPU visible in this container although the host runs NVIDIA driver {seen.driver}: "
                "training on the CPU (started without --gpus all?)")
    return ("no GPU visible: training on the CPU (a CPU-only machine or instance type, or a container "
            "started without --gpus all)")


def pick_device(choice: str, world: World = World(), seen: Seen | None = None) -> torch.device:
    """The GPU of this process's local rank, or the CPU (`choice` is the device setting: auto, cpu or cuda): never
    the CPU by surprise when a GPU was given."""
    if choice == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    seen = look() if seen is None else seen
    if seen.given:
        raise DeviceError(unusable_reason(seen, torch.__version__, torch.version.cuda, init_error()))
    if choice == "cuda":
        raise SettingsError("hyperparameter device=cuda but no CUDA GPU is visible "
                            "(run the container with --gpus all, or set device=auto to fall back to CPU)")
    return torch.device("cpu")


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run in hardware. Elsewhere bf16 is emulated and slower than fp32."""
    try:
        return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo.read_text()) is not None
    except OSError:
        return False


def pick_precision(choice: str, device: torch.device) -> str:
    """auto: bf16 where the hardware computes it natively (GPUs that support it; CPUs with AVX512-BF16
    or AMX, where it trained CoLA 1.6x faster than fp32 to the same MCC), fp32 elsewhere."""
    if choice == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if choice == "fp16" and device.type != "cuda":
        raise SettingsError("hyperparameter precision=fp16 needs a CUDA GPU; use fp32 or bf16 on CPU")
    if choice == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SettingsError("hyperparameter precision=bf16 is not supported by this GPU; use fp16 or fp32")
    return choice


def autocast(device: torch.device, precision: str, cache_enabled: bool = True):
    """bf16/fp16 autocast where asked; fp32 runs plain. CUDA graph capture needs cache_enabled=False."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
                          cache_enabled=cache_enabled)


def choose(device_choice: str, precision_choice: str, world: World, declared: str | None) -> tuple[Compute, str | None]:
    """The device and precision for this process (from the device and precision settings), and, when device=auto
    lands on the CPU, why (for job_start).
    Fails here, before any data work, when a GPU was given but CUDA cannot use it."""
    seen = look(declared=declared)
    device = pick_device(device_choice, world, seen)
    note = cpu_note(seen) if device.type == "cpu" and device_choice == "auto" else None
    return Compute(device, pick_precision(precision_choice, device), world), note
