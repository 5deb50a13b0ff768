#!/usr/bin/env bash
# Build the image and push it to Google Artifact Registry, tagged with the git commit; the last line of
# stdout is the pushed image by digest (LOCATION-docker.pkg.dev/PROJECT/REPO/seqcls@sha256:...), for --image.
#
#   GAR_LOCATION=us-central1 [GCP_PROJECT=my-project] [GAR_REPOSITORY=seqcls] [DRY_RUN=1] infra/image/push-gar.sh
#
# Needs docker, gcloud and roles/artifactregistry.writer on the repository (roles/artifactregistry.admin
# to create it on the first push).
set -euo pipefail
# shellcheck source=infra/image/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

location="${GAR_LOCATION:-}"
[[ -n "$location" ]] || die "set GAR_LOCATION (e.g. us-central1, the region of the Vertex jobs)"
repository_name="${GAR_REPOSITORY:-seqcls}"
project="${GCP_PROJECT:-}"
if [[ -z "$project" ]]; then
    [[ "${DRY_RUN:-0}" != 1 ]] || die "a dry run calls no Google API: set GCP_PROJECT"
    project="$(gcloud config get-value project 2>/dev/null)"
fi
[[ -n "$project" ]] || die "set GCP_PROJECT or run: gcloud config set project PROJECT"

host="$location-docker.pkg.dev"
tag="$(commit_tag)"

if [[ "${DRY_RUN:-0}" == 1 ]] || ! gcloud artifacts repositories describe "$repository_name" \
        --project "$project" --location "$location" >/dev/null 2>&1; then
    [[ "${DRY_RUN:-0}" != 1 ]] || echo "# only when the repository does not exist yet:"
    run gcloud artifacts repositories create "$repository_name" --project "$project" --location "$location" \
        --repository-format docker --description "seqcls training images"
fi
run gcloud auth configure-docker "$host" --quiet
build_and_push "$host/$project/$repository_name/seqcls" "$tag"
