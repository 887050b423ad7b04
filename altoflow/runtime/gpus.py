"""Which GPUs this machine has, and which of them each local replica gets.

``altoflow serve`` (without ``--ray``) gives every replica process of a stage with ``gpus=``
its own devices through ``CUDA_VISIBLE_DEVICES``, chosen here before any replica starts, and
refuses a pipeline that needs more GPUs than the machine has. A replica keeps its devices
across restarts: they belong to its slot.

The machine's GPUs are, in this order: ``ALTOFLOW_GPUS`` (a comma-separated list of device ids;
empty for none: for tests, or to hand altoflow a subset), the server's own
``CUDA_VISIBLE_DEVICES``, or the indices ``nvidia-smi -L`` lists (none without it).

A replica takes a fraction of one device (``gpus=0.5``: replicas share it, as on Ray) or whole
devices (``gpus=2``); whole replicas are placed first, then fractions first-fit.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterable

from altoflow.compiler.plan import StagePlan

GPUS_ENV = "ALTOFLOW_GPUS"
_EPS = 1e-9


class GpuShortage(ValueError):
    """The pipeline needs more GPUs than there are; the message names the stages and the fix."""


@dataclass(frozen=True)
class Gpus:
    """The devices altoflow may hand out, and where that list came from (for messages)."""

    devices: tuple[str, ...]
    source: str


def detect_gpus() -> Gpus:
    """This machine's GPUs: ``ALTOFLOW_GPUS``, else ``CUDA_VISIBLE_DEVICES``, else nvidia-smi."""
    for name in (GPUS_ENV, "CUDA_VISIBLE_DEVICES"):
        value = os.environ.get(name)
        if value is not None:
            return Gpus(_device_list(value), f"{name}={value}")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return Gpus((), "no nvidia-smi on PATH")
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return Gpus((), f"nvidia-smi -L failed: {exc}")
    # "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)", one line per device.
    ids = tuple(line.split(":", 1)[0].split()[1] for line in out.splitlines()
                if line.startswith("GPU ") and ":" in line)
    return Gpus(ids, "nvidia-smi -L")


def _device_list(value: str) -> tuple[str, ...]:
    devices = []
    for item in value.split(","):
        item = item.strip()
        if not item or item.startswith("-"):  # CUDA stops at an invalid id; "-1" hides every GPU
            break
        devices.append(item)
    return tuple(devices)


def assign_gpus(stages: Iterable[StagePlan], gpus: Gpus) -> dict[tuple[str, int], tuple[str, ...]]:
    """The devices of every replica of ``stages`` that needs GPUs, by (stage, slot).

    Raises ``GpuShortage`` when they do not fit on ``gpus`` and ``ValueError`` for a stage that
    asks for more than one GPU but not a whole number of them.
    """
    needing = [s for s in stages if s.gpus > 0]
    for s in needing:
        if s.gpus > 1 and s.gpus != int(s.gpus):
            raise ValueError(
                f"stage '{s.name}' ({s.location}) has gpus={s.gpus:g}: a replica takes a fraction "
                f"of one GPU (gpus=0.5, shared with other replicas) or whole GPUs (gpus=2), so "
                f"write gpus={math.ceil(s.gpus)}")
    free = {d: 1.0 for d in gpus.devices}
    assigned: dict[tuple[str, int], tuple[str, ...]] = {}
    whole = [s for s in needing if s.gpus >= 1]
    shared = [s for s in needing if s.gpus < 1]
    for s in whole:
        for slot in range(s.replicas):
            idle = [d for d in gpus.devices if free[d] >= 1 - _EPS][:int(s.gpus)]
            if len(idle) < s.gpus:
                raise _shortage(needing, gpus)
            for d in idle:
                free[d] = 0.0
            assigned[(s.name, slot)] = tuple(idle)
    for s in shared:
        for slot in range(s.replicas):
            device = next((d for d in gpus.devices if free[d] >= s.gpus - _EPS), None)
            if device is None:
                raise _shortage(needing, gpus)
            free[device] -= s.gpus
            assigned[(s.name, slot)] = (device,)
    return assigned


def _shortage(needing: list[StagePlan], gpus: Gpus) -> GpuShortage:
    total = sum(s.gpus * s.replicas for s in needing)
    stages = ", ".join(f"{s.name} x{s.replicas} (gpus={s.gpus:g} each)" for s in needing)
    have = f"{len(gpus.devices)} ({gpus.source})" if gpus.devices else f"none ({gpus.source})"
    return GpuShortage(
        f"the pipeline needs {total:g} GPUs for its replicas, {stages}, and this machine has "
        f"{have}. Lower those stages' --replicas or gpus=, run them on other machines (--remote "
        f"STAGE with `altoflow worker`, or --ray on a cluster), or set {GPUS_ENV} to the devices "
        f"altoflow may use")
