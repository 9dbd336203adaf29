# Two commands on a fresh machine: `make run` (the product) and `make test` (the suite;
# `make test-fast` for the inner loop). All bootstrap the virtualenv, the pinned requirements
# (runtime and dev) and the default model.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA := $(or $(WECOM_AI_DATA),var)
MODEL := $(DATA)/models/SmolLM2-135M-Instruct.Q4_1.gguf
# llama-cpp-python builds from source, once per CMAKE_ARGS, into a wheel cache outside the
# clone. The default is a portable AVX2 CPU build: native builds pick up AMX on Sapphire
# Rapids hosts, which crashes inside VMs that do not enable AMX tiles. GPU build: README,
# "GPU build" (the same CPU flags plus -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=native).
LLAMA_VERSION := 0.3.36
CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF
WHEEL_CACHE ?= $(HOME)/.cache/wecom-ai/wheels
LLAMA_WHEELS := $(WHEEL_CACHE)/llama-$(LLAMA_VERSION)-$(shell printf '%s' '$(CMAKE_ARGS)' | sha256sum | cut -c1-12)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test test-fast lint bootstrap model messages stop clean-data bench

run: bootstrap
	$(PY) -m wecom_ai.runner

# Everything: real worker processes, uvicorn, the live server (README, "Development").
test: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	DJANGO_ENV=test $(PY) -m wecom_ai.embedded with sh -c '\
		$(PY) manage.py makemigrations --check --dry-run && $(PY) -m pytest $(PYTEST_ARGS)'

# The tests that start no process and no live server (not marked `slow`), on FAST_WORKERS
# pytest-xdist workers (each its own test database and Redis databases), a module per worker.
FAST_WORKERS ?= 2
test-fast: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	DJANGO_ENV=test $(PY) -m wecom_ai.embedded with $(PY) -m pytest -m "not slow" \
		-n $(FAST_WORKERS) --dist loadscope $(PYTEST_ARGS)

lint: bootstrap
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bootstrap: $(VENV)/.installed $(MODEL) locale/zh_Hans/LC_MESSAGES/django.mo

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==25.3
	ls $(LLAMA_WHEELS)/*.whl >/dev/null 2>&1 || CMAKE_ARGS='$(CMAKE_ARGS)' \
		$(PY) -m pip wheel --no-deps --no-cache-dir -w $(LLAMA_WHEELS) llama-cpp-python==$(LLAMA_VERSION)
	$(PY) -m pip install --no-deps --force-reinstall $(LLAMA_WHEELS)/*.whl
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

$(MODEL): | $(VENV)/.installed
	$(PY) -m wecom_ai.model_fetch

locale/zh_Hans/LC_MESSAGES/django.mo: locale/zh_Hans/LC_MESSAGES/django.po | $(VENV)/.installed
	$(VENV)/bin/django-admin compilemessages --ignore '.venv/*' --ignore 'var/*'

messages: $(VENV)/.installed
	$(PY) manage.py makemessages -l zh_Hans --no-obsolete --ignore '.venv/*' --ignore 'var/*'

bench: bootstrap
	$(PY) bench/callback.py
	$(PY) bench/generate.py

stop:
	$(PY) -m wecom_ai.embedded stop

clean-data: stop
	$(PY) -m wecom_ai.embedded reset
