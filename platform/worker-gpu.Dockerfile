# The inference worker for one model version on NVIDIA GPUs (onnxruntime-gpu): an immutable unit.
#
# Same layout and context as worker-cpu.Dockerfile (see there); the differences:
# - BASE_IMAGE is a CUDA 13 runtime with cuDNN 9 *and* Python 3.11 with venv, for example one
#   built FROM nvidia/cuda:13.0.x-cudnn-runtime-ubuntu24.04 with python3.11 added (see the README,
#   "Docker engine"). There is no default: the platform passes KILN_DOCKER_GPU_BASE_IMAGE.
# - the wheelhouse holds onnxruntime-gpu instead of onnxruntime (platform/worker-gpu.requirements.txt);
#   the build checks that the CUDA execution provider is compiled in.
# - containers get the GPUs through the engine's NVIDIA runtime (device requests), which mounts the
#   driver; the worker runs on cuda:0, the first GPU it was given.
ARG BASE_IMAGE

FROM ${BASE_IMAGE} AS build
# Marks the stage's image, which the engine keeps as build cache: docker image prune --filter label=kiln.stage=build
LABEL kiln.stage=build
COPY wheelhouse/ /tmp/wheelhouse/
RUN python3 -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "BASE_IMAGE must provide Python 3.11 (the wheelhouse targets it), found " + sys.version)' \
 && python3 -m venv /opt/kiln/venv \
 && /opt/kiln/venv/bin/pip install --no-index --find-links /tmp/wheelhouse --no-cache-dir --disable-pip-version-check \
        --requirement /tmp/wheelhouse/requirements.txt \
 && /opt/kiln/venv/bin/pip install --no-index --find-links /tmp/wheelhouse --no-cache-dir --disable-pip-version-check \
        --no-deps kiln-inference-worker \
 && /opt/kiln/venv/bin/pip uninstall --yes --quiet pip \
 && /opt/kiln/venv/bin/python -c 'import inference_worker, onnxruntime; providers = onnxruntime.get_available_providers(); print("onnxruntime", onnxruntime.__version__, providers); assert "CUDAExecutionProvider" in providers, "onnxruntime-gpu without CUDA support"'

FROM ${BASE_IMAGE}
# Everything above the model-specific part is the same for every version, so the engine's layer
# cache makes the next version's build take seconds.
RUN groupadd --system --gid 10001 kiln \
 && useradd --system --uid 10001 --gid 10001 --home-dir /opt/kiln --no-create-home --shell /usr/sbin/nologin kiln
COPY --from=build /opt/kiln/venv /opt/kiln/venv
ENV PATH=/opt/kiln/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    KILN_WORKER_HOST=0.0.0.0 \
    KILN_WORKER_HTTP_PORT=8080 \
    KILN_WORKER_GRPC_PORT=8081 \
    KILN_WORKER_MODEL_PATH=/opt/kiln/model/model.onnx \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
EXPOSE 8080 8081
# The platform passes the port it chose through KILN_WORKER_HTTP_PORT, so the check follows it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; host = os.environ.get('KILN_WORKER_HOST', '127.0.0.1'); host = '127.0.0.1' if host in ('', '0.0.0.0') else host; urllib.request.urlopen('http://%s:%s/v2/health/ready' % (host, os.environ.get('KILN_WORKER_HTTP_PORT', '8080')), timeout=2)"]
ARG MODEL_NAME
ARG MODEL_VERSION
ARG MODEL_SHA256
ARG WORKER_VERSION
ARG WORKER_CODE_HASH
LABEL org.opencontainers.image.title="kiln-worker-gpu: ${MODEL_NAME} v${MODEL_VERSION}" \
      org.opencontainers.image.version="${MODEL_VERSION}" \
      kiln.flavour="gpu" \
      kiln.model.name="${MODEL_NAME}" \
      kiln.model.version="${MODEL_VERSION}" \
      kiln.model.sha256="${MODEL_SHA256}" \
      kiln.worker.version="${WORKER_VERSION}" \
      kiln.worker.code="${WORKER_CODE_HASH}"
ENV KILN_WORKER_MODEL_NAME=${MODEL_NAME} \
    KILN_WORKER_MODEL_VERSION=${MODEL_VERSION} \
    KILN_WORKER_MODEL_SHA256=${MODEL_SHA256}
COPY model/ /opt/kiln/model/
USER 10001:10001
ENTRYPOINT ["inference-worker"]
CMD ["serve"]
