"""The distributed launch: how many processes on how many nodes and where they meet (SageMaker's resourceconfig.json,
Vertex's CLUSTER_SPEC), the NCCL/EFA variables a SageMaker host needs, torchrun's ranks, and the GPU a platform
says this container has."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..errors import SettingsError

# Distributed launch: SageMaker describes the cluster in resourceconfig.json, Vertex in CLUSTER_SPEC;
# torchrun marks the processes it starts with LOCAL_RANK.
SM_RESOURCE_CONFIG = ("input", "config", "resourceconfig.json")
VERTEX_CLUSTER_SPEC = "CLUSTER_SPEC"
VERTEX_POOLS = ("workerpool0", "workerpool1")
NPROC_OVERRIDE = "SEQCLS_NPROC_PER_NODE"
DEFAULT_MASTER_PORT = 29500
# NCCL and EFA settings for SageMaker hosts, as SageMaker's own PyTorch launcher sets them
# (aws/sagemaker-training-toolkit @33839372: torch_distributed.py `TorchDistributedRunner._setup`; the
# instance lists are `SM_EFA_NCCL_INSTANCES` / `SM_EFA_RDMA_INSTANCES` in sagemaker_training/__init__.py;
# the resourceconfig.json keys and the "eth0" default are read in environment.py `Environment.__init__`).
SM_DEFAULT_NETWORK_INTERFACE = "eth0"
SM_EFA_NCCL_INSTANCES = frozenset({
    "ml.g4dn.8xlarge", "ml.g4dn.12xlarge", "ml.g5.48xlarge", "ml.p3dn.24xlarge", "ml.p4d.24xlarge",
    "ml.p4de.24xlarge", "ml.p5.48xlarge", "ml.trn1.32xlarge", "ml.p6e-gb200.36xlarge"})
SM_EFA_RDMA_INSTANCES = frozenset({"ml.p4d.24xlarge", "ml.p4de.24xlarge", "ml.trn1.32xlarge", "ml.p6e-gb200.36xlarge"})


def process_ranks(env: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world size, local rank): torchrun sets RANK, WORLD_SIZE and LOCAL_RANK for every process it starts."""
    env = os.environ if env is None else env
    return int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0"))


@dataclass(frozen=True)
class Launch:
    """How many processes on how many nodes, and where they meet (torchrun's arguments)."""

    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int
    env: Mapping[str, str] = field(default_factory=dict)  # variables to add to the launcher's environment

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def torchrun_args(self) -> list[str]:
        if self.nnodes == 1:
            return ["--standalone", f"--nproc_per_node={self.nproc_per_node}"]
        return [f"--nnodes={self.nnodes}", f"--node_rank={self.node_rank}", f"--nproc_per_node={self.nproc_per_node}",
                f"--master_addr={self.master_addr}", f"--master_port={self.master_port}"]


def sagemaker_nccl_env(resource_config: Mapping[str, object], env: Mapping[str, str]) -> dict[str, str]:
    """The NCCL/EFA variables this SageMaker host needs that `env` does not already set (the user's value wins).

    NCCL must use the interface SageMaker gives the container network, or it may pick one the other hosts
    cannot reach; on EFA instances it goes through libfabric's EFA provider. Unlike the toolkit, which also
    sets NCCL_PROTO=simple on every host, we set it on EFA instances only: its other runners
    (smdataparallel.py, mpi.py) do so, and say why: EFA delivers out of order.
    """
    instance_type = resource_config.get("current_instance_type", "local")
    wanted = {"NCCL_SOCKET_IFNAME": str(resource_config.get("network_interface_name") or SM_DEFAULT_NETWORK_INTERFACE)}
    if instance_type in SM_EFA_NCCL_INSTANCES:
        wanted.update(FI_PROVIDER="efa", NCCL_PROTO="simple")
    if instance_type in SM_EFA_RDMA_INSTANCES:
        wanted.update(FI_EFA_USE_DEVICE_RDMA="1", RDMAV_FORK_SAFE="1")
    return {name: value for name, value in wanted.items() if name not in env}


def launch_plan(root: Path, gpu_count: int, env: Mapping[str, str] | None = None) -> Launch | None:
    """The torchrun launch this node needs, or None when one process is enough or torchrun already started us."""
    env = os.environ if env is None else env
    if "LOCAL_RANK" in env:
        return None
    try:
        nproc = int(env.get(NPROC_OVERRIDE) or max(gpu_count, 1))
    except ValueError:
        raise SettingsError(f"{NPROC_OVERRIDE}={env[NPROC_OVERRIDE]!r} must be an integer") from None
    port = int(env.get("MASTER_PORT", DEFAULT_MASTER_PORT))
    nodes, node_rank, added_env = ["localhost"], 0, {}
    resource_config = root.joinpath(*SM_RESOURCE_CONFIG)
    if resource_config.is_file():
        config = json.loads(resource_config.read_text())
        nodes = sorted(config["hosts"])
        node_rank = nodes.index(config["current_host"])
        added_env = sagemaker_nccl_env(config, env)
    elif env.get(VERTEX_CLUSTER_SPEC):
        spec = json.loads(env[VERTEX_CLUSTER_SPEC])
        nodes = [address.rsplit(":", 1)[0] for pool in VERTEX_POOLS for address in spec["cluster"].get(pool, [])]
        task = spec["task"]
        node_rank = 0 if task["type"] == VERTEX_POOLS[0] else len(spec["cluster"][VERTEX_POOLS[0]]) + int(task["index"])
    launch = Launch(len(nodes), node_rank, nproc, nodes[0], port, added_env)
    return launch if launch.world_size > 1 else None


# --- The GPU the platform says this container has (read by seqcls.devices' fail-fast check) ---
# SageMaker writes the machine's instance type into resourceconfig.json as `current_instance_type`
# (sagemaker-training-toolkit, src/sagemaker_training/environment.py, read_resource_config; the SDK's local
# mode writes "local_gpu" or "local_cpu", sagemaker/train/local/local_container.py). The SDK itself calls an
# ml.<family>.<size> type a GPU type when the family starts with g or p (sagemaker-core image_uris._processor:
# `family[0] in ("g", "p")`). Vertex AI passes no accelerator setting into the container (its documented
# variables are AIP_*, CLOUD_ML_JOB_ID, CLUSTER_SPEC, TF_CONFIG): there the device files are the signal.
SM_INSTANCE_TYPE = "current_instance_type"
SM_LOCAL_GPU = "local_gpu"
SM_GPU_FAMILY_INITIALS = ("g", "p")


def declared_gpu(root: Path) -> str | None:
    """'SageMaker instance type ml.g5.xlarge' when the platform says this machine has a GPU, else None."""
    try:
        instance_type = json.loads(root.joinpath(*SM_RESOURCE_CONFIG).read_text()).get(SM_INSTANCE_TYPE) or ""
    except (OSError, ValueError, AttributeError):
        return None
    parts = instance_type.split(".")
    gpu_family = len(parts) == 3 and parts[0] == "ml" and parts[1][:1] in SM_GPU_FAMILY_INITIALS
    return f"SageMaker instance type {instance_type}" if gpu_family or instance_type == SM_LOCAL_GPU else None
