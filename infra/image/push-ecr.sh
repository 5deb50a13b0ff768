#!/usr/bin/env bash
# Build the image and push it to Amazon ECR, tagged with the git commit; the last line of stdout is the
# pushed image by digest (ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO@sha256:...), for --image.
#
#   AWS_REGION=eu-west-1 [AWS_ACCOUNT_ID=123456789012] [ECR_REPOSITORY=seqcls] [DRY_RUN=1] infra/image/push-ecr.sh
#
# Needs docker, the AWS CLI v2 and: ecr:GetAuthorizationToken, ecr:DescribeRepositories,
# ecr:CreateRepository (first push only), ecr:BatchCheckLayerAvailability, ecr:InitiateLayerUpload,
# ecr:UploadLayerPart, ecr:CompleteLayerUpload, ecr:PutImage (and sts:GetCallerIdentity without AWS_ACCOUNT_ID).
set -euo pipefail
# shellcheck source=infra/image/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

region="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
[[ -n "$region" ]] || die "set AWS_REGION (the region of the registry and of the training jobs)"
repository_name="${ECR_REPOSITORY:-seqcls}"
account="${AWS_ACCOUNT_ID:-}"
if [[ -z "$account" ]]; then
    [[ "${DRY_RUN:-0}" != 1 ]] || die "a dry run calls no AWS API: set AWS_ACCOUNT_ID"
    account="$(aws sts get-caller-identity --query Account --output text)"
fi
[[ "$account" =~ ^[0-9]{12}$ ]] || die "AWS account id must be 12 digits, got '$account'"

registry="$account.dkr.ecr.$region.amazonaws.com"
tag="$(commit_tag)"

if [[ "${DRY_RUN:-0}" == 1 ]] || ! aws ecr describe-repositories --region "$region" \
        --repository-names "$repository_name" >/dev/null 2>&1; then
    [[ "${DRY_RUN:-0}" != 1 ]] || echo "# only when the repository does not exist yet:"
    run aws ecr create-repository --region "$region" --repository-name "$repository_name" \
        --image-scanning-configuration scanOnPush=true
fi
if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "+ aws ecr get-login-password --region $region | docker login --username AWS --password-stdin $registry"
else
    aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry"
fi
build_and_push "$registry/$repository_name" "$tag"
