#!/usr/bin/env bash
# Create (or replace) a Cloud Scheduler job that starts the seqcls Vertex AI custom job on a schedule, by
# POSTing the CustomJob that `infra.vertex.submit --dry-run` prints to the Vertex REST API.
#
#   SCHEDULER_SA=scheduler@PROJECT.iam.gserviceaccount.com [SCHEDULE='0 3 * * 1'] [TIME_ZONE=Etc/UTC] \
#   [SCHEDULER_JOB=seqcls-retrain] [DRY_RUN=1] infra/schedule/vertex/create-scheduler-job.sh \
#       --project PROJECT --region us-central1 --image IMAGE --train gs://... --base-output-dir gs://... [--hp ...]
#
# SCHEDULER_SA needs roles/aiplatform.user and roles/iam.serviceAccountUser on the job's --service-account;
# the caller needs roles/cloudscheduler.admin. Each run creates a new custom job (Vertex names it).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
schedule="${SCHEDULE:-0 3 * * 1}"
time_zone="${TIME_ZONE:-Etc/UTC}"
name="${SCHEDULER_JOB:-seqcls-retrain}"
[[ -n "${SCHEDULER_SA:-}" ]] || { echo "error: set SCHEDULER_SA, the service account Cloud Scheduler calls Vertex as" >&2; exit 2; }

project="" region=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --project) project="${args[i + 1]:-}" ;;
        --project=*) project="${args[i]#*=}" ;;
        --region) region="${args[i + 1]:-}" ;;
        --region=*) region="${args[i]#*=}" ;;
    esac
done
[[ -n "$project" && -n "$region" ]] || { echo "error: pass --project and --region (the Vertex submit options)" >&2; exit 2; }

body="$(mktemp)"
trap 'rm -f "$body"' EXIT
(cd "$root" && "$python" -m infra.vertex.submit "$@" --dry-run) > "$body"

uri="https://$region-aiplatform.googleapis.com/v1/projects/$project/locations/$region/customJobs"
cmd=(gcloud scheduler jobs create http "$name" --project "$project" --location "$region"
    --schedule "$schedule" --time-zone "$time_zone" --uri "$uri" --http-method POST
    --headers Content-Type=application/json --message-body-from-file "$body"
    --oauth-service-account-email "$SCHEDULER_SA" --oauth-token-scope https://www.googleapis.com/auth/cloud-platform)
if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    printf '\n'
    cat "$body"
    exit 0
fi
# A scheduler job holds only this configuration: replacing it is the simplest exact update.
if gcloud scheduler jobs describe "$name" --location "$region" --project "$project" >/dev/null 2>&1; then
    gcloud scheduler jobs delete "$name" --location "$region" --project "$project" --quiet
fi
"${cmd[@]}"
