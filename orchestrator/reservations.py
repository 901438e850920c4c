"""What each actor reserves and what it uses of it: torch threads per phase, and device-seconds held idle.

Threads follow cores: the live actors' jobs split the cluster's CPUs between them (Pipeline.share_cores), so
a trainer reserving `trainer_cpus: 0.5` alone uses the free cores, and when a training job finishes the ones
still running take its cores' threads between two steps (actors.py set_threads). A job never runs fewer
threads than the whole CPUs it reserved (actors.py _threads).

Idle reservations: every actor reports when it was placed and how long its tasks ran (actors.py ActorUsage);
reserved minus busy, times the GPUs it holds (its CPUs where it holds none), is what it kept from other work.
The pipeline keeps it small by reserving evaluators only once the adapter exists and releasing every actor as
soon as its work is done (orchestrator/sweep_stage.py). Placement is the actor's __init__: the start of its
worker process, before that, is not counted.
"""

from __future__ import annotations

import math
import re

import ray

from orchestrator.messages import ActorUsage


def phase_threads(busy_jobs: int) -> int:
    """Torch threads for each of `busy_jobs` jobs that run at once: the cluster's CPUs split between them."""
    cpus = ray.cluster_resources().get("CPU", 1)
    return max(1, math.floor(cpus / max(1, busy_jobs)))


class Reservations:
    """The driver's ledger: actors by label, with what each reserves; usage is read before an actor goes."""

    def __init__(self):
        self.reserved: dict[str, float] = {}  # label -> devices held: GPUs, or CPUs where it holds no GPU
        self.actors: dict[str, object] = {}
        self.usage: dict[str, ActorUsage] = {}

    def add(self, label: str, actor, options: dict) -> None:
        self.reserved[label] = options.get("num_gpus") or options.get("num_cpus") or 0.0
        self.actors[label] = actor

    def read(self, label: str) -> None:
        """Ask a live actor for its usage (before it is released); one that died leaves no record."""
        actor = self.actors.pop(label, None)
        if actor is None:
            return
        try:
            self.usage[label] = ray.get(actor.usage.remote(), timeout=30)
        except (ray.exceptions.RayError, TimeoutError):
            pass

    def read_all(self) -> None:
        for label in list(self.actors):
            self.read(label)

    def label_of(self, actor) -> str | None:
        return next((label for label, a in self.actors.items() if a is actor), None)

    def metrics(self) -> dict[str, float]:
        """Per actor: reserved, busy and idle device-seconds and its threads; totals and the idle share."""
        out, reserved_total, idle_total = {}, 0.0, 0.0
        for label, use in sorted(self.usage.items()):
            devices = self.reserved[label]
            reserved, busy = use.reserved_seconds * devices, use.busy_seconds * devices
            name = re.sub(r"[^0-9A-Za-z_]", "_", label)
            out.update({f"{name}_reserved_device_seconds": reserved, f"{name}_busy_device_seconds": busy,
                        f"{name}_idle_device_seconds": reserved - busy, f"{name}_torch_threads": use.threads})
            reserved_total, idle_total = reserved_total + reserved, idle_total + reserved - busy
        if reserved_total:
            out.update(reserved_device_seconds=reserved_total, idle_device_seconds=idle_total,
                       idle_share=idle_total / reserved_total)
        return out
