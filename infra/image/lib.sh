# shellcheck shell=bash
# Shared by push-ecr.sh and push-gar.sh (sourced, not run): dry-run aware command runner, the commit
# tag, and build -> push -> digest. DRY_RUN=1 prints every command instead of running it.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

die() {
    echo "error: $*" >&2
    exit 2
}

# Run a command, or print it shell-quoted when DRY_RUN=1.
run() {
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# The image tag: the commit being built. A dirty tree would make the tag lie about the content, so it
# is refused unless ALLOW_DIRTY=1, and then the tag says so.
commit_tag() {
    local sha
    sha="$(git -C "$ROOT" rev-parse --short=12 HEAD)" || die "not a git checkout: $ROOT"
    if [[ -n "$(git -C "$ROOT" status --porcelain)" ]]; then
        [[ "${ALLOW_DIRTY:-0}" == 1 ]] || die "uncommitted changes in $ROOT: commit them (or ALLOW_DIRTY=1 for a -dirty tag)"
        sha="$sha-dirty"
    fi
    echo "$sha"
}

# build_and_push REPOSITORY_URI TAG: builds the repository's Dockerfile, pushes it, prints REPO@sha256:...
build_and_push() {
    local repository="$1" tag="$2" revision digest
    revision="$(git -C "$ROOT" rev-parse HEAD)"
    run docker build --label "org.opencontainers.image.revision=$revision" -t "$repository:$tag" "$ROOT"
    run docker push "$repository:$tag"
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        echo "$repository@sha256:<digest printed after a real push>"
        return
    fi
    # The registry's digest, not the local image id: pin jobs to it (image URIs with @sha256: are immutable).
    digest="$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$repository:$tag" \
        | grep -m1 "^$repository@sha256:")" || die "no pushed digest for $repository:$tag"
    echo "pushed $repository:$tag" >&2
    echo "$digest"
}
