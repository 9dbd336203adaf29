# syntax=docker/dockerfile:1
# One image for web, the Celery workers and beat (see README, "Production deployment").
#
# CPU (default, portable AVX2 build, like the Makefile):
#   docker build -t wecom-ai .
# CUDA (a devel base to compile, the matching runtime base to run; no GPU needed to build):
#   docker build -t wecom-ai:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#     --build-arg RUNTIME_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#     --build-arg CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=80;86;89;90 -DLLAVA_BUILD=OFF" .
#
# No secret is baked in: collectstatic runs with throwaway values that exist only inside
# that one RUN step; the real ones come from the environment / Docker secrets at run time.

ARG BASE_IMAGE=python:3.11-slim
ARG RUNTIME_IMAGE=python:3.11-slim

# --- build: compilers, the llama-cpp-python wheel, the virtualenv, static files, the model
FROM ${BASE_IMAGE} AS build

ARG CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF"
ARG LLAMA_VERSION=0.3.36
ARG DEFAULT_MODEL=/opt/wecom-ai/models/SmolLM2-135M-Instruct.Q4_1.gguf

ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# python:*-slim brings Python; the nvidia/cuda images do not, so take the distribution's.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential cmake ninja-build gettext ca-certificates \
    && if ! command -v python3 >/dev/null 2>&1; then \
        apt-get install -y --no-install-recommends python3 python3-venv python3-dev; \
    fi \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip==25.3

# llama-cpp-python first, built from source with CMAKE_ARGS (as the Makefile does), so that
# requirements.txt finds its pin already satisfied by this build.
RUN CMAKE_ARGS="${CMAKE_ARGS}" pip wheel --no-deps -w /wheels "llama-cpp-python==${LLAMA_VERSION}" \
    && pip install --no-deps /wheels/*.whl \
    && rm -rf /wheels

# The runtime pins only: requirements-dev.txt (pytest, ruff, test-document writers, benchmark
# tools) never enters the image.
COPY requirements.txt /app/requirements.txt
RUN pip install -r /app/requirements.txt

# The default model, SHA-256 verified by model_fetch; only this file is needed, so the
# layer stays cached while the rest of the code changes.
COPY wecom_ai/model_fetch.py /tmp/model_fetch.py
RUN python -c "import sys; from pathlib import Path; sys.path.insert(0, '/tmp'); \
from model_fetch import model_fetch; print(model_fetch(Path(sys.argv[1])))" "${DEFAULT_MODEL}"

WORKDIR /app
COPY manage.py pyproject.toml ./
COPY wecom_ai ./wecom_ai
COPY apps ./apps
COPY wecom ./wecom
COPY templates ./templates
COPY static ./static
COPY locale ./locale

# From /app, which holds no virtualenv: compilemessages compiles every locale/ below the
# current directory (run inside locale/ itself it finds none and stops with an error).
RUN django-admin compilemessages

# Production settings refuse to import without secrets, and only production writes the
# static manifest, so collectstatic gets throwaway values here (never stored in the image).
# Settings require DATABASE_URL / REDIS_URL but only read them: nothing connects.
ENV STATIC_ROOT=/app/staticfiles
RUN DJANGO_ENV=production \
    SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(64))')" \
    FIELD_ENCRYPTION_KEYS="$(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')" \
    AUDIT_LEDGER_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(48))')" \
    ALLOWED_HOSTS=build.invalid \
    PUBLIC_BASE_URL=https://build.invalid \
    DATABASE_URL=postgres://build@127.0.0.1:1/build \
    REDIS_URL=redis://:build@127.0.0.1:1 \
    WECOM_AI_DATA=/tmp/build-data \
    python manage.py collectstatic --noinput -v 0 \
    && rm -rf /tmp/build-data

# --- runtime: no compilers, non-root
# /opt/wework is where the session-archive vendor SDK is mounted (ARCHIVE_SDK_ALLOWED_DIRS):
# root-owned, so the app user can neither replace the library nor plant another one.
FROM ${RUNTIME_IMAGE} AS runtime

ARG DEFAULT_MODEL=/opt/wecom-ai/models/SmolLM2-135M-Instruct.Q4_1.gguf
ARG DEBIAN_FRONTEND=noninteractive

# libgomp1: llama.cpp's CPU backend uses OpenMP. The Python must be the one the build stage
# created the virtualenv with (same base family).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 ca-certificates \
    && if ! command -v python3 >/dev/null 2>&1; then \
        apt-get install -y --no-install-recommends python3; \
    fi \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 wecom \
    && useradd --system --uid 10001 --gid wecom --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin wecom \
    && mkdir -p /data/media /models /anchors \
    && chown wecom:wecom /data /data/media /models /anchors \
    && chmod 0700 /anchors \
    && install -d -o root -g root -m 0755 /opt/wework

COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/wecom-ai /opt/wecom-ai
COPY --from=build /app /app

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=wecom_ai.settings \
    DJANGO_ENV=production \
    WECOM_AI_DATA=/data \
    STATIC_ROOT=/app/staticfiles \
    DEFAULT_MODEL_PATH=${DEFAULT_MODEL}

WORKDIR /app
USER wecom
EXPOSE 8000

CMD ["uvicorn", "wecom_ai.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--no-access-log", "--timeout-graceful-shutdown", "10"]
