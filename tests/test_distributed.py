"""torch.distributed: launch derivation, exact global-batch math, and real 2-process gloo runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from jobtools import REPO, json_lines, run_cli
from seqcls import runtime
from seqcls.distributed import World, shard
from storage_servers import free_port


def test_one_process_needs_no_launcher(tmp_path):
    assert runtime.launch_plan(tmp_path, gpu_count=0, env={}) is None
    assert runtime.launch_plan(tmp_path, gpu_count=1, env={}) is None


def test_local_gpus_or_override_start_torchrun_standalone(tmp_path):
    launch = runtime.launch_plan(tmp_path, gpu_count=8, env={})
    assert launch.world_size == 8 and launch.torchrun_args() == ["--standalone", "--nproc_per_node=8"]
    assert runtime.launch_plan(tmp_path, gpu_count=0, env={"SEQCLS_NPROC_PER_NODE": "2"}).nproc_per_node == 2


def test_processes_started_by_torchrun_do_not_launch_again(tmp_path):
    assert runtime.launch_plan(tmp_path, gpu_count=8, env={"LOCAL_RANK": "3"}) is None


def test_sagemaker_multi_host_from_resourceconfig(tmp_path):
    config = tmp_path / "input" / "config"
    config.mkdir(parents=True)
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-2", "hosts": ["algo-3", "algo-1", "algo-2"], "network_interface_name": "eth0"}))
    launch = runtime.launch_plan(tmp_path, gpu_count=4, env={})
    assert (launch.nnodes, launch.node_rank, launch.nproc_per_node, launch.master_addr, launch.master_port) == \
        (3, 1, 4, "algo-1", 29500)
    assert launch.torchrun_args() == ["--nnodes=3", "--node_rank=1", "--nproc_per_node=4", "--master_addr=algo-1",
                                      "--master_port=29500"]


# resourceconfig.json as SageMaker writes it (keys: sagemaker-training-toolkit environment.py read_resource_config).
def _resource_config(root: Path, instance_type: str, current_host: str = "algo-1") -> None:
    config = root / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    hosts = ["algo-1", "algo-2"]
    (config / "resourceconfig.json").write_text(json.dumps({
        "current_host": current_host, "current_instance_type": instance_type, "current_group_name": "homogeneousCluster",
        "hosts": hosts, "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": instance_type,
                                             "hosts": hosts}],
        "network_interface_name": "eth0"}))


# Expected values: aws/sagemaker-training-toolkit @33839372, torch_distributed.py TorchDistributedRunner._setup
# (NCCL_SOCKET_IFNAME always; FI_PROVIDER=efa for SM_EFA_NCCL_INSTANCES; FI_EFA_USE_DEVICE_RDMA=1 and
# RDMAV_FORK_SAFE=1 for SM_EFA_RDMA_INSTANCES, both lists in sagemaker_training/__init__.py) and mpi.py /
# smdataparallel.py (NCCL_PROTO=simple on EFA instances).
@pytest.mark.parametrize(("instance_type", "expected"), [
    ("ml.g5.12xlarge", {"NCCL_SOCKET_IFNAME": "eth0"}),
    ("ml.p5.48xlarge", {"NCCL_SOCKET_IFNAME": "eth0", "FI_PROVIDER": "efa", "NCCL_PROTO": "simple"}),
    ("ml.p4d.24xlarge", {"NCCL_SOCKET_IFNAME": "eth0", "FI_PROVIDER": "efa", "NCCL_PROTO": "simple",
                         "FI_EFA_USE_DEVICE_RDMA": "1", "RDMAV_FORK_SAFE": "1"}),
])
def test_sagemaker_hosts_get_nccl_interface_and_efa_settings(tmp_path, instance_type, expected):
    _resource_config(tmp_path, instance_type)
    assert runtime.launch_plan(tmp_path, gpu_count=8, env={}).env == expected


def test_variables_the_user_set_are_kept(tmp_path):
    _resource_config(tmp_path, "ml.p4d.24xlarge")
    launch = runtime.launch_plan(tmp_path, gpu_count=8, env={"NCCL_SOCKET_IFNAME": "ens5", "NCCL_PROTO": "LL128"})
    assert launch.env == {"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1", "RDMAV_FORK_SAFE": "1"}


def test_vertex_and_local_launches_add_no_nccl_settings(tmp_path):
    assert runtime.launch_plan(tmp_path, gpu_count=8, env={}).env == {}


class _Execed(BaseException):
    """Stands in for the exec: the test process must not become torchrun."""


def test_train_execs_torchrun_with_the_added_environment(tmp_path, monkeypatch):
    """What `seqcls train` hands to exec on host algo-2 of an ml.p4d.24xlarge pair, with the user's interface kept."""
    from seqcls import cli

    _resource_config(tmp_path, "ml.p4d.24xlarge", current_host="algo-2")
    monkeypatch.setenv("SEQCLS_OPT_ML", str(tmp_path))
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ens5")
    for name in ("LOCAL_RANK", "FI_PROVIDER", "NCCL_PROTO", "FI_EFA_USE_DEVICE_RDMA", "RDMAV_FORK_SAFE"):
        monkeypatch.delenv(name, raising=False)
    execs = []

    def fake_execve(path, args, env):
        execs.append((path, args, env))
        raise _Execed

    monkeypatch.setattr(cli.os, "execve", fake_execve)
    cli.train_command([])
    (path, args, env), = execs
    assert args[1:4] == ["-m", "torch.distributed.run", "--nnodes=2"] and "--node_rank=1" in args
    assert env["NCCL_SOCKET_IFNAME"] == "ens5"
    assert (env["FI_PROVIDER"], env["NCCL_PROTO"], env["FI_EFA_USE_DEVICE_RDMA"], env["RDMAV_FORK_SAFE"]) == \
        ("efa", "simple", "1", "1")
    assert env["SEQCLS_OPT_ML"] == str(tmp_path)  # the rest of the environment still reaches the ranks


def test_vertex_cluster_spec(tmp_path):
    spec = {"cluster": {"workerpool0": ["cmle-training-workerpool0-ab-0:2222"],
                        "workerpool1": ["cmle-training-workerpool1-ab-0:2222", "cmle-training-workerpool1-ab-1:2222"]},
            "environment": "cloud", "task": {"type": "workerpool1", "index": 1}}
    launch = runtime.launch_plan(tmp_path, gpu_count=2, env={"CLUSTER_SPEC": json.dumps(spec), "MASTER_PORT": "3333"})
    assert (launch.nnodes, launch.node_rank, launch.nproc_per_node, launch.master_addr, launch.master_port) == \
        (3, 2, 2, "cmle-training-workerpool0-ab-0", 3333)
    chief = dict(spec, task={"type": "workerpool0", "index": 0})
    assert runtime.launch_plan(tmp_path, gpu_count=1, env={"CLUSTER_SPEC": json.dumps(chief)}).node_rank == 0


@pytest.mark.parametrize("batch", [32, 11, 1])
def test_sharded_gradients_equal_the_global_batch_gradient(batch):
    """What DDP computes (the mean over ranks of each rank's scaled loss gradient) is the one-process gradient."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 2)
    x, y = torch.randn(batch, 4), torch.randint(0, 2, (batch,))
    rows = np.arange(batch)

    def grad(loss: torch.Tensor) -> torch.Tensor:
        layer.zero_grad()
        loss.backward()
        return layer.weight.grad.clone()

    whole = grad(torch.nn.functional.cross_entropy(layer(x), y))
    world_size = 4
    averaged = torch.zeros_like(whole)
    for rank in range(world_size):
        mine, share = shard(rows, World(rank, world_size))
        averaged += grad(torch.nn.functional.cross_entropy(layer(x[mine]), y[mine]) * share) / world_size
    assert torch.allclose(averaged, whole, atol=1e-6)


@pytest.mark.slow
def test_two_gloo_processes_write_once_and_evaluate_every_test_row(tmp_path, cola_dir, minilm_path):
    from jobtools import make_tree
    from seqcls import data, devices, evaluate
    from seqcls.settings import Settings
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = make_tree(tmp_path / "ml", cola_dir, {"epochs": "1", "batch_size": "16", "log_every_steps": "2"},
                     train_rows=120, test_rows=51, model=minilm_path)
    result = run_cli(["train"], env={"SEQCLS_OPT_ML": str(root), "SEQCLS_NPROC_PER_NODE": "2",
                                     "MASTER_PORT": str(free_port())})
    assert result.returncode == 0, result.stderr[-3000:]
    records = json_lines(result.stdout)
    assert records[0]["event"] == "launch"
    job_start = next(r for r in records if r["event"] == "job_start")
    assert job_start["world_size"] == 2
    assert {r["rank"] for r in records if r["event"] == "train_progress"} == {0}
    assert all(r["rank"] == 0 for r in records if r["level"] == "INFO")
    assert [r["event"] for r in records].count("artifacts_saved") == 1
    assert [r["event"] for r in records].count("job_end") == 1
    saved = [r for r in records if r["event"] == "checkpoint_saved"]
    assert [r["rank"] for r in saved] == [0]  # one checkpoint, written once, by rank 0...
    assert not list((root / "checkpoints").glob("ckpt-*.pt"))  # ...and removed once the run succeeded

    metrics = json.loads((root / "model" / "metrics.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(root / "model")
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    test = data.read_channel(root / "input" / "data" / "test", "test", Settings().reading)
    label_map = data.LabelMap(metrics["labels"])
    encoded, _ = data.tokenize(tokenizer, test, label_map.encode(test), 64)
    cpu = torch.device("cpu")
    single_precision = devices.pick_precision(Settings().precision, cpu)
    single = evaluate.predict(model, encoded, 0, 256, devices.Compute(cpu, single_precision))
    again = evaluate.classification_metrics(encoded.labels, single.predicted, 2)
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == 51
    assert again["confusion_matrix"] == metrics["test"]["confusion_matrix"]
    assert again["mcc"] == pytest.approx(metrics["test"]["mcc"])
    # Each rank's length-sorted batches pad to other widths than one process's; under bf16 autocast
    # (auto on CPUs with native bf16) that moves the loss in the 5th digit, never a prediction.
    assert single.loss == pytest.approx(metrics["test"]["loss"], rel=1e-5 if single_precision == "fp32" else 1e-3)


@pytest.mark.slow
def test_a_failing_rank_fails_the_job_and_is_named(tmp_path, cola_dir, minilm_path):
    from jobtools import make_tree

    root = make_tree(tmp_path / "ml", cola_dir, {"epochs": "1", "batch_size": "8", "distributed_timeout_s": "60"},
                     train_rows=120, test_rows=20, model=minilm_path)
    started = time.monotonic()
    result = run_cli(["train"], env={"SEQCLS_OPT_ML": str(root), "SEQCLS_NPROC_PER_NODE": "2",
                                     "MASTER_PORT": str(free_port()), "FAULT_INJECT_RANK": "1",
                                     "PYTHONPATH": f"{Path(__file__).parent / 'fault_injection'}:{REPO / 'src'}"})
    assert result.returncode != 0
    assert time.monotonic() - started < 120
    reason = (root / "output" / "failure").read_text()
    assert reason.startswith("rank 1: internal error: RuntimeError: injected fault on this rank"), reason
    failed = [r for r in json_lines(result.stdout) if r["event"] == "job_failed"]
    assert any(r["rank"] == 1 for r in failed)
    assert not (root / "model" / "model.safetensors").exists()
