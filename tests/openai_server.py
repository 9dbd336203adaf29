"""A real OpenAI-compatible server on loopback: llama-cpp-python's `llama_cpp.server`
serving the bundled model, for the remote engine's tests (never a fake server)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

MODEL_ALIAS = "smollm2-test"
API_KEY = "test-key-remote-engine"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OpenAIServer:
    """`python -m llama_cpp.server` with the model under an alias and an API key.

    `--interrupt_requests False`: by default a new request cuts the one streaming, which
    would end a queued conversation's neighbour early; the server serves one at a time.
    """

    def __init__(
        self, *, model_path: str, log_path: Path, port: int | None = None, embedding: bool = False
    ) -> None:
        self.port = port or free_port()
        self.embedding = embedding  # serve /v1/embeddings (llama.cpp's embedding mode)
        self.model_path = model_path
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, *, wait: bool = True) -> OpenAIServer:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "llama_cpp.server", "--model", self.model_path,
                "--model_alias", MODEL_ALIAS, "--api_key", API_KEY,
                "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048",
                "--n_threads", "1", "--interrupt_requests", "False",
                *(["--embedding", "True"] if self.embedding else []),
            ],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        )  # fmt: skip
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {API_KEY}"}
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited early:\n{self.log()}")
            try:
                response = httpx.get(f"{self.base_url}/models", headers=headers, trust_env=False)
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server is not up after {timeout} s:\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process is not None:
            self._log.close()
