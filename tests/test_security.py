"""Security review items, each pinned by a test: model folders are data, never code; weights load from
safetensors only; nothing unpickles; secrets never reach logs or manifests; channel files cannot point
outside their channel; runtime dependencies are locked.
"""

from __future__ import annotations

import ast
import json
import pickle
import re
import tomllib
from pathlib import Path

import pytest

from jobtools import (assert_clean_failure, build_tiny_model, good_csv, minilm_folder, run_cli, run_inprocess, run_subprocess,
                       write_tree)

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO / "src").rglob("*.py"))


def calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call `X.name(...)` or `name(...)` in src/."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called == name:
                    found.append((path, node))
    return found


def keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def where(path: Path, call: ast.Call) -> str:
    return f"{path.relative_to(REPO)}:{call.lineno}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", minilm_folder())


def copy_folder(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for item in source.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target


# --- model folders are data, not code ---------------------------------------------------------------

def test_every_from_pretrained_refuses_remote_code() -> None:
    loads = calls("from_pretrained")
    assert loads, "expected from_pretrained calls in src/"
    for path, call in loads:
        assert keyword(call, "trust_remote_code") is False, f"{where(path, call)} must pass trust_remote_code=False"
    for path in [*SOURCES, *(REPO / d for d in ("entrypoint", "infra", "container") if (REPO / d).is_dir())]:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            text = file.read_text(encoding="utf-8", errors="replace")
            assert not re.search(r"trust_remote_code\s*=\s*True", text), f"{file} enables remote code"


def write_code_marker(folder: Path, marker: Path, model_type: str) -> None:
    """A model folder whose config asks for its own Python code; running that code would create `marker`."""
    (folder / "configuration_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('code from the model folder ran')\n"
        "from transformers import PretrainedConfig\nclass EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {name: "configuration_evil.EvilConfig"
                          for name in ("AutoConfig", "AutoModel", "AutoModelForSequenceClassification")}
    (folder / "config.json").write_text(json.dumps(config))


def test_custom_code_model_is_refused_and_its_code_never_runs(tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "PWNED"
    folder = copy_folder(tiny, tmp_path / "evil")
    write_code_marker(folder, marker, model_type="evil")
    root = write_tree(tmp_path / "opt_ml", {"data/train/train.csv": good_csv()})
    outcome = run_inprocess(root, ["--model", str(folder)], {}, monkeypatch, capsys)
    assert_clean_failure(outcome, ["needs its own Python code", "never runs code"])
    assert not marker.exists()


def test_known_architecture_with_auto_map_loads_without_running_its_code(tmp_path: Path, tiny: Path) -> None:
    """model_type bert plus an auto_map: transformers' own BERT code is used, the folder's file is ignored."""
    from seqcls import model
    from seqcls.data import LabelMap

    marker = tmp_path / "PWNED"
    folder = copy_folder(tiny, tmp_path / "bert_with_code")
    write_code_marker(folder, marker, model_type="bert")
    config = model.load_config(str(folder), LabelMap(["0", "1"]))
    model.load_tokenizer(str(folder))
    loaded = model.load_model(str(folder), config, seed=0)
    assert type(loaded).__name__ == "BertForSequenceClassification"
    assert not marker.exists()


# --- weights: safetensors only, nothing unpickled ------------------------------------------------------

def test_weights_load_only_from_safetensors() -> None:
    model_loads = [(p, c) for p, c in calls("from_pretrained")
                   if isinstance(c.func, ast.Attribute) and "Model" in ast.unparse(c.func.value)]
    assert model_loads
    for path, call in model_loads:
        assert keyword(call, "use_safetensors") is True, f"{where(path, call)} must pass use_safetensors=True"
    for path, call in calls("save_pretrained"):
        if keyword(call, "safe_serialization") is not None:
            assert keyword(call, "safe_serialization") is True, where(path, call)


class _Payload:
    """Unpickling this object would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle ran"))


def test_a_pickle_beside_safetensors_is_never_opened(tmp_path: Path, tiny: Path) -> None:
    from seqcls import model
    from seqcls.data import LabelMap

    marker = tmp_path / "PWNED"
    folder = copy_folder(tiny, tmp_path / "both")
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    config = model.load_config(str(folder), LabelMap(["0", "1"]))
    model.load_model(str(folder), config, seed=0)
    assert not marker.exists()


def test_a_pickle_only_model_is_refused_unopened(tmp_path: Path, tiny: Path) -> None:
    from seqcls import model
    from seqcls.errors import ModelError

    marker = tmp_path / "PWNED"
    folder = copy_folder(tiny, tmp_path / "pickle_only")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelError, match="pickle weights are refused"):
        model.check_local_folder(folder)
    assert not marker.exists()
    pickle.loads((folder / "pytorch_model.bin").read_bytes())  # the payload is live: opening it would have run it
    assert marker.exists()


def _index_to(folder: Path, shard: str) -> None:
    """Replace model.safetensors by an index that maps every tensor to `shard`, as a sharded save would."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        names = list(handle.keys())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": dict.fromkeys(names, shard)}))


def _pickle_shard_folder(tiny: Path, folder: Path, marker: Path) -> Path:
    """The probe: an index whose only shard is weights.bin, a torch.save-style pickle that writes `marker` if opened."""
    copy_folder(tiny, folder)
    _index_to(folder, "weights.bin")
    (folder / "model.safetensors").unlink()
    (folder / "weights.bin").write_bytes(pickle.dumps(_Payload(marker)))
    return folder


def test_an_index_naming_a_pickle_shard_is_refused_before_any_load(tmp_path: Path, tiny: Path) -> None:
    from seqcls import model
    from seqcls.data import LabelMap
    from seqcls.errors import ModelError

    marker = tmp_path / "PWNED"
    folder = _pickle_shard_folder(tiny, tmp_path / "indexed", marker)
    with pytest.raises(ModelError, match=r"names shard 'weights\.bin'.*pickle weights are refused"):
        model.load_config(str(folder), LabelMap(["0", "1"]))
    assert not marker.exists()


@pytest.mark.parametrize("shard, expect", [("../outside.safetensors", "names shard '../outside.safetensors'"),
                                           ("missing.safetensors", "missing or not a plain file")])
def test_an_index_shard_outside_the_folder_or_missing_is_refused(shard: str, expect: str, tmp_path: Path, tiny: Path) -> None:
    from seqcls import model
    from seqcls.errors import ModelError

    folder = copy_folder(tiny, tmp_path / "indexed")
    _index_to(folder, shard)
    (folder / "model.safetensors").rename(tmp_path / "outside.safetensors")
    with pytest.raises(ModelError, match=re.escape(expect)):
        model.check_local_folder(folder)


def test_a_sharded_safetensors_model_still_loads(tmp_path: Path, tiny: Path) -> None:
    from seqcls import model
    from seqcls.data import LabelMap

    folder = copy_folder(tiny, tmp_path / "sharded")
    _index_to(folder, "model-00001-of-00001.safetensors")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    config = model.load_config(str(folder), LabelMap(["0", "1"]))
    assert model.load_model(str(folder), config, seed=0) is not None


def test_predict_refuses_a_pickle_shard_with_exit_2_naming_the_file(tmp_path: Path, tiny: Path) -> None:
    marker = tmp_path / "PWNED"
    folder = _pickle_shard_folder(tiny, tmp_path / "indexed", marker)
    rows = tmp_path / "rows.csv"
    rows.write_text("text\nhello there\n")
    done = run_cli(["predict", "--model", str(folder), "--input", str(rows), "--output", str(tmp_path / "out.csv")])
    assert done.returncode == 2, done.stderr[-2000:]
    assert "names shard 'weights.bin'" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists() and not (tmp_path / "out.csv").exists()


def test_no_code_path_unpickles() -> None:
    """Checkpoints (training/train.py) must load with torch.load(weights_only=True): this pins it for
    every torch.load in src/, and keeps pickle-based loaders out altogether."""
    for path, call in calls("load"):
        if ast.unparse(call.func) == "torch.load":
            assert keyword(call, "weights_only") is True, f"{where(path, call)} must pass weights_only=True"
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in node.names} | {(node.module or "").split(".")[0] for node in ast.walk(tree)
                                                if isinstance(node, ast.ImportFrom)}
        assert not imported & {"pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}, f"{path} imports a pickle loader"


# --- secrets ------------------------------------------------------------------------------------------

SECRET = "s3cr3t-Do-Not-Leak-9f81c2"


def test_secret_environment_never_reaches_logs_or_files(tmp_path: Path, tiny: Path) -> None:
    """A whole successful run with credentials in the environment: the value appears nowhere we write."""
    env = {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": SECRET + "-token", "HF_TOKEN": SECRET + "-hf",
           "WANDB_API_KEY": SECRET + "-wandb", "DB_PASSWORD": SECRET + "-db"}
    root = write_tree(tmp_path / "opt_ml", {"data/train/train.csv": good_csv(), "data/test/test.csv": good_csv(8)})
    outcome = run_subprocess(root, ["--model", str(tiny), "--epochs", "1", "--log_every_steps", "1"], env)
    assert outcome.code == 0, outcome.stderr[-3000:]
    assert (root / "model" / "run_manifest.json").is_file()
    assert SECRET not in outcome.stdout and SECRET not in outcome.stderr
    for path in root.rglob("*"):
        if path.is_file() and "input" not in path.relative_to(root).parts:
            assert SECRET.encode() not in path.read_bytes(), f"secret leaked into {path}"


@pytest.mark.parametrize("files, env, expect", [
    ({"config/hyperparameters.json": json.dumps({"wandb_api_key": SECRET})}, {}, ["'wandb_api_key'"]),
    ({"config/hyperparameters.json": json.dumps({"api_token": [SECRET]})}, {}, ["api_token", "value masked"]),
    ({}, {"SEQCLS_HF_TOKEN": SECRET}, ["'hf_token'"]),
], ids=["unknown_secret_hyperparameter", "secret_list_value", "secret_env_hyperparameter"])
def test_secret_values_stay_out_of_failure_reasons(files: dict, env: dict, expect: list[str], tmp_path: Path, tiny: Path,
                                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    root = write_tree(tmp_path / "opt_ml", {"data/train/train.csv": good_csv(), **files})
    outcome = run_inprocess(root, ["--model", str(tiny)], env, monkeypatch, capsys)
    assert_clean_failure(outcome, expect)
    assert SECRET not in outcome.stdout + outcome.stderr + outcome.failure


def test_settings_snapshot_masks_secret_looking_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting today is a credential (a KMS key id is an identifier, kept for reruns), so the masking is checked
    on a real field whose name the rule is widened to match, and on the names the rule guards."""
    from seqcls import settings

    assert all(settings.is_secret(name) for name in ("aws_secret_access_key", "HF_TOKEN", "api_key", "db_password"))
    assert not [name for name in settings.FIELDS if settings.is_secret(name)]
    monkeypatch.setattr(settings.fields, "SECRET_MARKERS", (*settings.SECRET_MARKERS, "run_id"))
    snapshot = settings.resolve([("cli", {"output_uri": "s3://bucket/runs", "run_id": "hunter2"})]).snapshot()
    assert snapshot["run_id"] == {"value": "***", "source": "cli"} and "hunter2" not in json.dumps(snapshot)
    assert snapshot["output_uri"] == {"value": "s3://bucket/runs", "source": "cli"}


# --- paths stay inside their folders ----------------------------------------------------------------------

def test_a_symlink_out_of_a_channel_is_refused(tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    outside = tmp_path / "elsewhere" / "private.csv"
    outside.parent.mkdir()
    outside.write_text(good_csv())
    root = write_tree(tmp_path / "opt_ml", {"data/train/own.csv": good_csv()})
    (root / "input" / "data" / "train" / "linked.csv").symlink_to(outside)
    outcome = run_inprocess(root, ["--model", str(tiny)], {}, monkeypatch, capsys)
    assert_clean_failure(outcome, ["linked.csv", str(outside), "outside the channel folder"])


def test_a_symlinked_channel_folder_and_links_inside_it_are_fine(tmp_path: Path) -> None:
    """Mounting a channel by symlink (as local runs and the core tests do) stays allowed."""
    from seqcls import data
    from seqcls.settings import Settings

    real = tmp_path / "real_train"
    real.mkdir()
    (real / "a.csv").write_text(good_csv())
    (real / "b.csv").symlink_to(real / "a.csv")
    channel = tmp_path / "train"
    channel.symlink_to(real, target_is_directory=True)
    assert len(data.read_channel(channel, "train", Settings().reading).frame) == 48


def test_run_id_cannot_leave_the_output_folder(tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    root = write_tree(tmp_path / "opt_ml", {"data/train/train.csv": good_csv()})
    outcome = run_inprocess(root, ["--model", str(tiny), "--run_id", "../../etc"], {}, monkeypatch, capsys)
    assert_clean_failure(outcome, ["run_id='../../etc'"])


@pytest.mark.parametrize("run_id", ["a\x00b", "run\u2013one", "caf\u00e9"], ids=["nul", "en_dash", "accent"])
def test_a_run_id_that_is_not_plain_ascii_is_refused_and_shown_escaped(run_id: str, tmp_path: Path, tiny: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    root = write_tree(tmp_path / "opt_ml", {"data/train/train.csv": good_csv(),
                                            "config/hyperparameters.json": json.dumps({"run_id": run_id})})
    outcome = run_inprocess(root, ["--model", str(tiny)], {}, monkeypatch, capsys)
    assert_clean_failure(outcome, [f"run_id={run_id!r}", "ASCII letters"])
    if not run_id.isprintable():  # a control character is shown escaped, never raw
        assert run_id not in outcome.stdout + outcome.stderr + outcome.failure


def test_a_platform_job_name_that_is_no_safe_run_id_is_refused(tmp_path: Path, tiny: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    root = write_tree(tmp_path / "opt_ml", {"data/train/train.csv": good_csv()})
    outcome = run_inprocess(root, ["--model", str(tiny)], {"TRAINING_JOB_NAME": "nightly\u2013retrain"}, monkeypatch, capsys)
    assert_clean_failure(outcome, ["job name 'nightly\u2013retrain'", "set hyperparameter run_id"])


# --- dependencies ----------------------------------------------------------------------------------------

def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_runtime_dependencies_are_locked() -> None:
    """The image installs container/requirements.txt (`make lock`): every runtime dependency pinned exactly."""
    lock = {}
    for line in (REPO / "container" / "requirements.txt").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            assert re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+]+", line), f"not an exact pin: {line!r}"
            name, version = line.split("==")
            lock[name.lower().replace("_", "-")] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    image_extras = re.findall(r"--extra (\w+)", (REPO / "Makefile").read_text())  # `make lock`'s extras: the image's
    assert {"sagemaker", "vertex", "serve", "trackers"} <= set(image_extras), image_extras
    declared = project["dependencies"] + [d for extra in image_extras for d in project["optional-dependencies"][extra]]
    missing = [d for d in declared if _name(d) not in lock]
    assert not missing, f"runtime dependencies missing from the lock (run `make lock`): {missing}"
