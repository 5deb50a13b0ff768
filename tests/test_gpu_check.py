"""`make gpu-check` cannot rot between the rare GPU runs: CI builds the bundle and runs the very same
script as a CPU rehearsal (`DEVICE=cpu QUICK=1`), same stages and report, tiny sizes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHONPATH")}
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.slow
def test_the_cpu_rehearsal_builds_the_bundle_and_runs_every_stage_into_one_report(tmp_path, cola_dir):
    bundle, out = tmp_path / "bundle", tmp_path / "out"
    built = make("gpu-bundle", f"GPU_BUNDLE={bundle}", f"COLA_DIR={cola_dir}", timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    assert size <= 50 * 2**20
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    assert {"all-MiniLM-L6-v2-fp16/model.safetensors", "cola/in_domain_train.tsv"} <= manifest["files"].keys()
    assert any(name.startswith("wheels/python_json_logger-") for name in manifest["files"])

    done = make("gpu-check", "DEVICE=cpu", "QUICK=1", f"GPU_BUNDLE={bundle}", f"CHECK_OUT={out}", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    stages = report["stages"]
    assert list(stages) == ["bundle", "environment", "tests", "throughput", "whole_job", "inference"]
    assert all(stage["status"] == "ok" for stage in stages.values()), stages
    env = report["environment"]
    assert env["not_on_gpu_image_but_imported"] == [] and env["seqcls_from"] == str(REPO / "src" / "seqcls")
    assert env["pythonjsonlogger_from"].startswith("/") and "site-packages" not in env["pythonjsonlogger_from"]
    tests = stages["tests"]["result"]
    assert len(tests["cases"]) >= 4 and tests["failure"] == tests["error"] == 0
    assert tests["skipped"] == (0 if torch.cuda.is_available() else len(tests["cases"]))  # CI: no GPU, all skip
    speed = stages["throughput"]["result"]
    assert speed["tutorial_samples_per_s"] > 0 and speed["seqcls_samples_per_s"] > 0 and speed["seqcls_path"] == "eager"
    variants = stages["whole_job"]["result"]["variants"]
    assert [v["variant"] for v in variants] == ["cuda_graphs=true", "cuda_graphs=false"]
    assert all(v["path"] == "eager" and -1 <= v["test_mcc"] <= 1 and v["wall_s"] > 0 for v in variants)
    assert all(v["path_detail"] == "device is cpu" for v in variants)  # why eager, or the self-check on a GPU
    served = stages["inference"]["result"]
    assert served["shared_passes"]["passes"] < served["requests"] == served["one_pass_per_request"]["passes"] == 50
    assert served["predict"]["rows"] == 256 and served["predict"]["rows_per_s"] > 0 and served["ratio"] > 0
    assert report["targets"] == {"judged": False, "why": "CPU or --quick rehearsal: targets apply to a full run on a GPU"}
    text = (out / "gpu-check.md").read_text()
    for heading in ("## Environment", "## Stages", "## CUDA tests", "## Training throughput", "## Whole CoLA job", "## Inference", "## Targets"):
        assert heading in text
    assert "===== whole_job" in (out / "gpu-check.log").read_text()


def test_a_damaged_bundle_stops_the_check_at_once_with_the_reason(tmp_path):
    bundle, out = tmp_path / "bundle", tmp_path / "out"
    (bundle / "cola").mkdir(parents=True)
    (bundle / "cola" / "in_domain_train.tsv").write_text("cut short")
    (bundle / "MANIFEST.json").write_text(json.dumps({"files": {"cola/in_domain_train.tsv": {"sha256": "0" * 64, "bytes": 9}}}))
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--bundle", str(bundle),
                           "--out", str(out), "--device", "cpu", "--quick"], capture_output=True, text=True, timeout=120)
    report = json.loads((out / "gpu-check.json").read_text())
    assert done.returncode == 1 and list(report["stages"]) == ["bundle"]
    assert "differs from MANIFEST.json" in report["stages"]["bundle"]["note"] and report["status"] == "failed: bundle"
    missing = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--bundle", str(tmp_path / "none"),
                              "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "run `make gpu-bundle`" in (out / "gpu-check.md").read_text()


def test_a_stage_that_overruns_is_killed_with_everything_it_started(tmp_path):
    check = load_check()
    marker = tmp_path / "grandchild.pid"
    script = f"import subprocess, time; p = subprocess.Popen(['sleep', '60']); open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    start = time.monotonic()
    code, _, seconds = check.run([sys.executable, "-c", script], dict(os.environ), 3, tmp_path / "log", "slow")
    assert code is None and time.monotonic() - start < 30
    grandchild = int(marker.read_text())
    time.sleep(0.5)
    state = Path(f"/proc/{grandchild}/stat")
    assert not state.exists() or state.read_text().split()[2] == "Z"  # gone (or a zombie awaiting its reaper)
