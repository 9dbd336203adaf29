"""Model setup helpers for the admin: the GGUF files an admin can choose, and a trial load
(for a remote engine: a health check and a one-token answer).

A trial load answers "will this profile load, and how big is it?" before any bot depends
on it. It runs in the web process, in one background thread with a timeout, and frees the
model at once: the workers' engines stay untouched, and a second trial waits its turn
instead of doubling the memory.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from apps.inference.engine.base import (
    ChatRequest,
    EngineError,
    ModelSpec,
    RemoteSpec,
    SamplingParams,
)

# More files than this in the models folder are not offered (a mis-set folder, e.g. "/").
MAX_LISTED_FILES = 200
TRIAL_TIMEOUT_SECONDS = 120.0
# KV cache entries are stored as 16-bit floats (llama.cpp's default cache type).
KV_BYTES_PER_VALUE = 2

_trial_lock = threading.Lock()
_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="trial-load")


class TrialBusy(Exception):
    """Another trial load is running in this process."""


class TrialFailed(Exception):
    """The model did not load (or not within the timeout); the message says why."""


@dataclass(frozen=True)
class TrialLoad:
    load_seconds: float
    context_size: int
    layers: int
    gpu_layers: int  # layers actually offloaded: 0 on a CPU build whatever was asked
    weights_bytes: int
    kv_cache_bytes: int  # for every context window the profile reserves

    @property
    def memory_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes


def gguf_files_list(*, directory: str | Path) -> list[Path]:
    """The .gguf files under `directory` (one level of subfolders too), sorted by path."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = sorted(
        path for pattern in ("*.gguf", "*/*.gguf") for path in root.glob(pattern) if path.is_file()
    )
    return found[:MAX_LISTED_FILES]


def kv_windows(spec: ModelSpec) -> int:
    """Context windows of KV cache the engine reserves: one per slot and per cached prompt."""
    return spec.slots + (spec.prefix_cache_size if spec.slots > 1 else 0)


def _load(spec: ModelSpec) -> TrialLoad:
    import llama_cpp  # loading libllama only when a trial is asked for

    started = time.monotonic()
    try:
        llama = llama_cpp.Llama(
            model_path=spec.path,
            n_ctx=spec.n_ctx,
            n_gpu_layers=spec.n_gpu_layers,
            n_threads=spec.n_threads,
            n_batch=spec.n_batch,
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        raise TrialFailed(str(exc)) from exc
    try:
        load_seconds = time.monotonic() - started
        model = llama.model
        layers = int(llama_cpp.llama_model_n_layer(model))
        n_embd = int(llama_cpp.llama_model_n_embd(model))
        n_head = max(1, int(llama_cpp.llama_model_n_head(model)))
        n_head_kv = int(llama_cpp.llama_model_n_head_kv(model))
        per_window = 2 * layers * llama.n_ctx() * (n_embd * n_head_kv // n_head)
        offload = bool(llama_cpp.llama_supports_gpu_offload())
        requested = layers if spec.n_gpu_layers < 0 else min(spec.n_gpu_layers, layers)
        return TrialLoad(
            load_seconds=load_seconds,
            context_size=llama.n_ctx(),
            layers=layers,
            gpu_layers=requested if offload else 0,
            weights_bytes=int(llama_cpp.llama_model_size(model)),
            kv_cache_bytes=per_window * KV_BYTES_PER_VALUE * kv_windows(spec),
        )
    finally:
        llama.close()


def model_trial_load(*, spec: ModelSpec, timeout: float = TRIAL_TIMEOUT_SECONDS) -> TrialLoad:
    """Load `spec` once, measure it and free it; raises TrialBusy or TrialFailed."""
    if not Path(spec.path).is_file():
        raise TrialFailed(f"no file at {spec.path}")
    if not _trial_lock.acquire(blocking=False):
        raise TrialBusy
    future = _executor.submit(_load, spec)
    # The lock is released when the load ends, not when we stop waiting for it.
    future.add_done_callback(lambda _: _trial_lock.release())
    try:
        return future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise TrialFailed(f"still loading after {timeout:.0f} s") from None


@dataclass(frozen=True)
class RemoteTrial:
    health_seconds: float
    models: tuple[str, ...]
    first_token_seconds: float


def model_trial_remote(*, spec: RemoteSpec, timeout: float = 30.0) -> RemoteTrial:
    """Ask the server for its models, then for a one-token answer; raises TrialFailed.

    A fresh engine of its own, without retries: the workers' engines and their queues stay
    untouched, and a server that fails says so at once.
    """
    from apps.inference.engine.remote import RemoteEngine, remote_health

    health = remote_health(spec=spec)
    if not health.ok:
        raise TrialFailed(health.error)
    started = time.monotonic()
    request = ChatRequest(
        messages=({"role": "user", "content": "Hi"},),
        sampling=SamplingParams(max_tokens=1, temperature=0.0),
        deadline=started + timeout,
    )
    with RemoteEngine(dataclasses.replace(spec, concurrency=1, retries=0)) as engine:
        try:
            generation = engine.submit(request)
            for _piece in generation:
                break
        except EngineError as exc:
            raise TrialFailed(str(exc)) from exc
    if generation.stats.first_token_at is None:
        raise TrialFailed(f"no answer within {timeout:.0f} s")
    return RemoteTrial(
        health_seconds=health.seconds,
        models=health.models,
        first_token_seconds=generation.stats.first_token_at - started,
    )
