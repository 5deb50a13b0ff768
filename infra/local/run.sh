#!/usr/bin/env bash
# Run the training image on this machine's GPUs with the same /opt/ml tree SageMaker gives it.
#
#   infra/local/run.sh --image seqcls:latest --train data/train.tsv [--validation PATH] [--test PATH] \
#       [--model DIR] [--output runs/local] [--hp epochs=2 ...]
#
# Each data path (file or folder) is mounted read-only at /opt/ml/input/data/<channel>/; hyperparameters
# go to <output>/input/config/hyperparameters.json as strings, exactly as SageMaker writes them; the
# model, output/data, output/failure and checkpoints land under --output. GPUS=none runs on CPU,
# GPUS='"device=1"' picks a GPU; DRY_RUN=1 prints the docker command. MLflow's variables that are set here
# (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, MLFLOW_TRACKING_TOKEN, ...) pass into the container, for
# --hp report_to=mlflow (docs/tracking.md).
set -euo pipefail

usage() {
    sed -n '2,13s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

image="" have_train=0 output="runs/local-$(date -u +%Y%m%d-%H%M%S)"
declare -a mounts=() hyperparameters=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --image) image="${2:?--image needs a value}"; shift 2 ;;
        --output) output="${2:?--output needs a value}"; shift 2 ;;
        --train|--validation|--test|--model)
            channel="${1#--}" path="${2:?$1 needs a path}"
            [[ "$channel" != train ]] || have_train=1
            [[ -e "$path" ]] || { echo "error: $1 $path does not exist" >&2; exit 2; }
            path="$(cd "$(dirname "$path")" && pwd)/$(basename "$path")"
            if [[ -d "$path" ]]; then
                mounts+=(-v "$path:/opt/ml/input/data/$channel:ro")
            else
                mounts+=(-v "$path:/opt/ml/input/data/$channel/$(basename "$path"):ro")
            fi
            shift 2 ;;
        --hp)
            pair="${2:?--hp needs NAME=VALUE}"
            [[ "$pair" == *=* ]] || { echo "error: --hp $pair: expected NAME=VALUE" >&2; exit 2; }
            hyperparameters+=("$pair"); shift 2 ;;
        -h|--help) usage ;;
        *) echo "error: unknown option $1" >&2; usage ;;
    esac
done
[[ -n "$image" ]] || { echo "error: --image is required" >&2; usage; }
[[ "$have_train" == 1 ]] || { echo "error: --train is required" >&2; exit 2; }

mkdir -p "$output/input/config" "$output/model" "$output/output" "$output/checkpoints"
output="$(cd "$output" && pwd)"
# JSON string values, as SageMaker writes them; python3 does the quoting.
python3 - "$output/input/config/hyperparameters.json" "${hyperparameters[@]}" <<'PY'
import json, sys
pairs = dict(arg.split("=", 1) for arg in sys.argv[2:])
with open(sys.argv[1], "w", encoding="utf-8") as handle:
    json.dump(pairs, handle, indent=2)
PY

declare -a tracking=()
while IFS= read -r name; do
    tracking+=(-e "$name")  # docker run -e NAME: the caller's value, never written into the command line
done < <(compgen -e | grep '^MLFLOW_' || true)
gpus=(--gpus "${GPUS:-all}")
[[ "${GPUS:-all}" != none ]] || gpus=()
cmd=(docker run --rm "${gpus[@]}" --shm-size 2g
    --user "$(id -u):$(id -g)" -e HOME=/tmp "${tracking[@]}"
    -v "$output/input/config:/opt/ml/input/config:ro"
    -v "$output/model:/opt/ml/model"
    -v "$output/output:/opt/ml/output"
    -v "$output/checkpoints:/opt/ml/checkpoints"
    "${mounts[@]}"
    "$image" train)
if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    printf '\n'
    exit 0
fi
echo "model, output/data and checkpoints go to $output" >&2
exec "${cmd[@]}"
