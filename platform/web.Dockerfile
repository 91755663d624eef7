# The platform image: Django (web UI, admin, API), Celery worker and beat, and the gateway.
# Context: the repository root. Dependencies come from var/wheelhouse/platform (bin/prepare-wheelhouse);
# front-end assets from static_build/ (bin/build-assets). Nothing is fetched while building.
# BASE_IMAGE: an official python:3.11-slim image for users, or the local debootstrap image in CI.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
LABEL kiln.stage=build
COPY var/wheelhouse/platform/ /tmp/wheelhouse/
RUN python3 -m venv /opt/kiln/venv \
 && /opt/kiln/venv/bin/pip install --no-index --find-links /tmp/wheelhouse --no-cache-dir --disable-pip-version-check \
        --requirement /tmp/wheelhouse/requirements.txt
COPY inference_worker/ /opt/kiln/app/inference_worker/
RUN cd /opt/kiln/app && /opt/kiln/venv/bin/python -m inference_worker.build_protos >/dev/null

FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 kiln \
 && useradd --system --uid 10001 --gid 10001 --home-dir /opt/kiln --no-create-home --shell /usr/sbin/nologin kiln \
 && mkdir -p /var/lib/kiln && chown kiln:kiln /var/lib/kiln
COPY --from=build /opt/kiln/venv /opt/kiln/venv
WORKDIR /opt/kiln/app
COPY manage.py pyproject.toml requirements.lock ./
COPY config/ config/
COPY accounts/ accounts/
COPY registry/ registry/
COPY deployments/ deployments/
COPY dashboard/ dashboard/
COPY observability/ observability/
COPY templates/ templates/
COPY static/ static/
COPY static_build/ static_build/
COPY platform/worker-cpu.Dockerfile platform/worker-gpu.Dockerfile platform/worker-gpu.requirements.txt platform/
COPY --from=build /opt/kiln/app/inference_worker/ inference_worker/
# The worker's wheels: worker images are built from them with no index (see PIP_* below).
COPY var/wheelhouse/worker/ /opt/kiln/wheelhouse/
ENV PATH=/opt/kiln/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    KILN_VAR_DIR=/var/lib/kiln \
    PIP_FIND_LINKS=/opt/kiln/wheelhouse \
    PIP_NO_INDEX=1 \
    STATIC_ROOT=/opt/kiln/staticfiles
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput -v 0
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=5 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["gunicorn", "config.wsgi", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "4", "--timeout", "300", "--access-logfile", "-", "-c", "python:config.gunicorn_conf"]
