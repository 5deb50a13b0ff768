"""No silent CPU fallback: a container that was given a GPU CUDA cannot use fails before any data work, with
the reason; one given no GPU says so at WARNING in job_start and trains on the CPU.

The signals are faked on this CPU machine the way the real hosts present them:
- NVIDIA device files: the NVIDIA container toolkit puts /dev/nvidia<N> (one per GPU) beside nvidiactl and
  nvidia-uvm into a container started with `--gpus`; a temporary folder stands in for /dev.
- The driver version: /proc/driver/nvidia/version, written by the NVIDIA kernel module, e.g.
  "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023".
- SageMaker: resourceconfig.json's `current_instance_type` (sagemaker-training-toolkit environment.py,
  read_resource_config; the SDK's local mode writes "local_gpu"/"local_cpu", local_container.py).
- The minimum driver per CUDA major version: NVIDIA "CUDA Compatibility", minor version compatibility,
  Table 1 (13.x >= 580, 12.x >= 525, 11.x >= 450).
This machine's PyTorch is a CPU-only build, so in the end-to-end case CUDA really cannot be used.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jobtools import json_lines, make_tree, run_cli
from seqcls import devices
from seqcls.errors import DeviceError, SettingsError
from seqcls.runtime import declared_gpu

DRIVER_535 = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\nGCC version:  gcc version 12.2.0\n"
DRIVER_580 = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (dvs-builder@U22)\n"


def fake_dev(tmp_path: Path, *names: str) -> Path:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in names:
        (dev / name).touch()
    return dev


def driver_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "version"
    path.write_text(text)
    return path


def no_smi() -> None:
    return None


def test_device_files_and_driver_version_are_read_as_the_hosts_present_them(tmp_path):
    dev = fake_dev(tmp_path, "nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "null")
    seen = devices.look(device_dir=dev, driver_file=driver_file(tmp_path, DRIVER_535), nvidia_smi=no_smi)
    assert seen.devices == (str(dev / "nvidia0"), str(dev / "nvidia1")) and seen.driver == "535.104.05" and seen.given
    assert devices.look(device_dir=dev, driver_file=driver_file(tmp_path, DRIVER_580), nvidia_smi=no_smi).driver == "580.95.05"


def test_control_devices_alone_are_no_gpu_and_nvidia_smi_stands_in_for_a_hidden_proc_file(tmp_path):
    only_control = devices.look(device_dir=fake_dev(tmp_path, "nvidiactl", "nvidia-uvm"),
                            driver_file=tmp_path / "absent", nvidia_smi=lambda: "570.86.15")
    assert not only_control.given and only_control.driver is None  # nvidia-smi is asked only when a GPU is there
    with_gpu = devices.look(device_dir=tmp_path / "dev", driver_file=tmp_path / "absent", nvidia_smi=lambda: "570.86.15")
    assert with_gpu.driver is None  # no nvidia0 in that folder
    (tmp_path / "dev" / "nvidia0").touch()
    assert devices.look(device_dir=tmp_path / "dev", driver_file=tmp_path / "absent",
                    nvidia_smi=lambda: "570.86.15").driver == "570.86.15"
    assert devices.look(device_dir=tmp_path / "nowhere", driver_file=tmp_path / "absent", nvidia_smi=no_smi) == devices.Seen()


@pytest.mark.parametrize("instance_type, declared", [
    ("ml.g5.xlarge", True), ("ml.p4d.24xlarge", True), ("ml.g6e.12xlarge", True), ("local_gpu", True),
    ("ml.m5.xlarge", False), ("ml.c5.2xlarge", False), ("ml.trn1.32xlarge", False), ("local_cpu", False),
])
def test_sagemaker_instance_type_says_whether_the_machine_has_a_gpu(tmp_path, instance_type, declared):
    config = tmp_path / "input" / "config"
    config.mkdir(parents=True)
    # The shape SageMaker writes (sagemaker-training-toolkit environment.py documents these keys).
    (config / "resourceconfig.json").write_text(json.dumps({
        "current_host": "algo-1", "current_instance_type": instance_type, "current_group_name": "homogeneousCluster",
        "hosts": ["algo-1"], "network_interface_name": "eth0",
        "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": instance_type,
                             "hosts": ["algo-1"]}]}))
    expected = f"SageMaker instance type {instance_type}" if declared else None
    assert declared_gpu(tmp_path) == expected


def test_no_or_unreadable_resourceconfig_declares_nothing(tmp_path):
    assert declared_gpu(tmp_path) is None
    (tmp_path / "input" / "config").mkdir(parents=True)
    (tmp_path / "input" / "config" / "resourceconfig.json").write_text("{not json")
    assert declared_gpu(tmp_path) is None


def test_the_reason_names_the_driver_found_and_the_driver_needed():
    old = devices.Seen(devices=("/dev/nvidia0",), driver="535.104.05")
    reason = devices.unusable_reason(old, "2.11.0+cu130", "13.0", "The NVIDIA driver on your system is too old")
    assert "/dev/nvidia0" in reason and "driver 535.104.05 is older than the 580" in reason
    assert "CUDA 13.0" in reason and reason.endswith("set device=cpu to train on the CPU anyway")
    assert "\n" not in reason and len(reason) < 1024
    assert "older" not in devices.unusable_reason(devices.Seen(("/dev/nvidia0",), "580.95.05"), "2.11.0", "13.0", "cuInit 999")
    assert "cuInit 999" in devices.unusable_reason(devices.Seen(("/dev/nvidia0",), "580.95.05"), "2.11.0", "13.0", "cuInit 999")
    declared = devices.Seen(declared="SageMaker instance type ml.g5.xlarge")
    assert "no NVIDIA driver is visible" in devices.unusable_reason(declared, "2.11.0+cu130", "13.0", None)
    assert "CPU-only build" in devices.unusable_reason(declared, "2.13.0+cpu", None, None)
    assert devices.required_driver("12.8") == 525 and devices.required_driver("11.8") == 450 and devices.required_driver(None) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens where CUDA cannot be used")
def test_pick_device_fails_when_a_given_gpu_cannot_be_used_unless_cpu_was_asked_for(tmp_path):
    given = devices.look(device_dir=fake_dev(tmp_path, "nvidia0", "nvidiactl"),
                     driver_file=driver_file(tmp_path, DRIVER_535), nvidia_smi=no_smi)
    for device in ("auto", "cuda"):
        with pytest.raises(DeviceError, match="a GPU was given to this container"):
            devices.pick_device(device, seen=given)
    assert devices.pick_device("cpu", seen=given).type == "cpu"
    assert devices.pick_device("auto", seen=devices.Seen()).type == "cpu"
    with pytest.raises(SettingsError, match="device=cuda but no CUDA GPU is visible"):
        devices.pick_device("cuda", seen=devices.Seen())


def test_cpu_note_names_the_likely_cause():
    assert "--gpus all" in devices.cpu_note(devices.Seen(driver="580.95.05")) and "580.95.05" in devices.cpu_note(devices.Seen(driver="580.95.05"))
    assert "CPU-only machine" in devices.cpu_note(devices.Seen())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens where CUDA cannot be used")
def test_a_sagemaker_gpu_job_whose_gpu_cannot_be_used_fails_before_reading_data(tmp_path, cola_dir):
    """The real entry point on a SageMaker tree whose resourceconfig.json says ml.g5.xlarge; here CUDA cannot
    be used (CPU-only PyTorch), so the job must fail with one line, before data_ready."""
    root = make_tree(tmp_path / "opt_ml", cola_dir, {"epochs": "1"}, train_rows=40, test_rows=20)
    (root / "input" / "config" / "resourceconfig.json").write_text(json.dumps({
        "current_host": "algo-1", "current_instance_type": "ml.g5.xlarge", "hosts": ["algo-1"],
        "network_interface_name": "eth0"}))
    done = run_cli(["train"], env={"SEQCLS_OPT_ML": str(root), "TRAINING_JOB_NAME": "gpu-job"}, timeout=300)
    events = [record["event"] for record in json_lines(done.stdout)]
    failure = (root / "output" / "failure").read_text()
    assert done.returncode == 2 and events == ["job_failed"], (events, done.stderr[-2000:])
    assert failure.count("\n") == 1 and "SageMaker instance type ml.g5.xlarge" in failure
    assert "CPU-only build" in failure and "device=cpu" in failure


def test_a_job_without_any_gpu_says_so_at_warning_in_job_start(tmp_path, cola_dir):
    """Stopped right after job_start by a missing train channel, so no training is spent."""
    root = tmp_path / "opt_ml"
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text("{}")
    done = run_cli(["train"], env={"SEQCLS_OPT_ML": str(root), "TRAINING_JOB_NAME": "cpu-job"}, timeout=300)
    start = json_lines(done.stdout)[0]
    if torch.cuda.is_available():
        assert start["level"] == "INFO" and start["no_gpu"] is None
        return
    assert start["event"] == "job_start" and start["level"] == "WARNING" and start["device"] == "cpu"
    assert "no GPU visible" in start["message"] and "--gpus all" in start["no_gpu"]
