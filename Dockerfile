# seqcls training image: `docker run IMAGE train` (SageMaker), container args `--name=value` (Vertex AI),
# or `docker run --gpus all -v ...:/opt/ml/... IMAGE` on a workstation. See docs/container.md.
# The same image serves a trained model: `docker run IMAGE serve` (SageMaker hosting, Vertex with args
# ["serve"], a workstation with -p 8080:8080). See docs/serving.md.
#
# BASE_IMAGE must be glibc Linux. The default ships Python with torch 2.13.0 (CUDA 13.0), which the
# virtualenv below sees (--system-site-packages) so pip skips the pinned torch; any other base (an
# nvidia/cuda runtime, plain Debian for CI) gets Python from apt and torch's CUDA wheels from PyPI.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python from the distribution only when the base has none that can make a virtualenv. DL3008: apt
# versions are whatever the base's release carries; the Python packages are the pinned ones.
# hadolint ignore=DL3008
RUN if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv --system-site-packages /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/tmp/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib

# Pinned dependencies first: this layer is the big one and changes only with the lock.
# Optional build secret `extra-ca` (PEM): CA certificates of a TLS-intercepting proxy, added to pip's
# bundle for this step only; it never lands in a layer.
COPY container/requirements.txt /tmp/requirements.txt
RUN --mount=type=secret,id=extra-ca \
    if [ -s /run/secrets/extra-ca ]; then \
      cat "$(python -m pip._vendor.certifi)" /run/secrets/extra-ca > /tmp/ca-bundle.pem; \
      export PIP_CERT=/tmp/ca-bundle.pem; \
    fi \
    && pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt \
    && rm -f /tmp/ca-bundle.pem /tmp/requirements.txt

# The package itself (no dependency resolution: the lock above is the whole environment).
COPY pyproject.toml README.md /tmp/seqcls/
COPY src /tmp/seqcls/src
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation /tmp/seqcls \
    && rm -rf /tmp/seqcls

COPY entrypoint/train /usr/local/bin/train

# The job runs as root, as AWS's own training images and Vertex AI's prebuilt containers do: SageMaker
# (and its SDK's local mode) mounts /opt/ml/{model,output,checkpoints} root-owned with mode 0755, and
# Vertex presents /gcs through Cloud Storage FUSE, where chmod/chown are ignored. An unprivileged user
# cannot write either (docs/container.md: "What the container needs"). `docker run --user UID:GID` still works
# where the mounted folders are writable by that user; the job checks this before any data work.
RUN mkdir -p /opt/ml/input/config /opt/ml/input/data /opt/ml/model /opt/ml/output/data /opt/ml/checkpoints \
    && chmod -R a+rwX /opt/ml
WORKDIR /opt/ml

# Last, so a new commit rebuilds only this layer.
ARG GIT_COMMIT=""
ENV SEQCLS_GIT_COMMIT=${GIT_COMMIT}

# SageMaker hosting and Vertex AI send health and prediction requests to 8080 unless told otherwise.
EXPOSE 8080

# Exec form: Python is PID 1 and gets SIGTERM itself (docker stop, SageMaker StopTrainingJob, Vertex cancel).
ENTRYPOINT ["train"]
