# syntax=docker/dockerfile:1
# Forward Attribution: one image for the worker (`python -m worker ...`) and
# the API (`python -m service ...`, the default command).
#
#   docker build -t forward-attribution:cpu .                          # CPU (default)
#   docker build -t forward-attribution:cuda --build-arg VARIANT=cuda .  # CUDA build of torch
#
# VARIANT selects torch's wheel index (cpu, or CUDA_TAG for cuda) and the
# runtime stage; the CUDA wheels bring their own CUDA libraries, so the host
# needs only the NVIDIA driver and the NVIDIA Container Toolkit (run with
# `--gpus all`, or the compose `deploy.resources.reservations.devices` stanza
# in docs/deploy.md). See docs/deploy.md.

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build
ARG VARIANT
ARG TORCH_VERSION=2.13.0
ARG CUDA_TAG=cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the index of the variant (a plain `pip install torch`
# would pull the multi-GB CUDA build into the CPU image)
RUN case "$VARIANT" in \
      cpu)  index=https://download.pytorch.org/whl/cpu ;; \
      cuda) index=https://download.pytorch.org/whl/${CUDA_TAG} ;; \
      *) echo "VARIANT must be cpu or cuda, got '$VARIANT'" >&2; exit 2 ;; \
    esac \
 && pip install --index-url "$index" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY influence ./influence
COPY worker ./worker
COPY service ./service
# a regular (not editable) install: the dashboard's static files ship as package data
RUN pip install . \
 && python -c "import service.dashboard as d; assert (d.STATIC_DIR / 'dashboard.html').is_file()"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime-cpu

FROM ${PYTHON_IMAGE} AS runtime-cuda
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM runtime-${VARIANT} AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="forward-attribution" \
      org.opencontainers.image.description="Forward-only training-data attribution: worker and REST service" \
      ai.forward-attribution.variant="${VARIANT}"
RUN useradd --system --uid 10001 --home-dir /app --create-home fa \
 && mkdir -p /stores /var/lib/fa \
 && chown fa:fa /stores /var/lib/fa
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OMP_WAIT_POLICY=PASSIVE \
    FA_HOST=0.0.0.0 \
    FA_PORT=8000 \
    FA_STORE=/stores/digits \
    FA_DATA_DIR=/var/lib/fa
USER fa
WORKDIR /app
EXPOSE 8000
# ready = the store is resident on its device
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('FA_PORT', '8000'), timeout=2)"]
# First run: the worker builds the digits store into $FA_STORE unless one is published (--if-missing); the
# service itself never trains. Compose runs the worker as its own one-shot service instead.
CMD ["sh", "-c", "python -m worker build --preset digits --store \"$FA_STORE\" --if-missing --quiet && exec python -m service"]
