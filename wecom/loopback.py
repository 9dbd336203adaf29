"""An HTTP server the simulators serve from a daemon thread, as a context manager.

The simulators are loopback stand-ins for WeCom's and WeChat's servers; each is a
`ThreadingHTTPServer` with its own handler and state. What they share is how they run:
started in a daemon thread (polling often, so closing is quick and test teardown fast),
closed with the port released, and addressed by `base_url`.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    thread_name = "loopback-http"

    def __init__(
        self, handler: type[BaseHTTPRequestHandler], *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__((host, port), handler)
        self._serving: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        if isinstance(host, bytes):  # typeshed allows bytes (AF_UNIX); AF_INET gives str
            host = host.decode()
        return f"http://{host}:{port}"

    def start(self) -> Self:
        """Serve in a daemon thread until close()."""
        if self._serving is None:
            self._serving = threading.Thread(
                target=self.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=self.thread_name,
                daemon=True,
            )
            self._serving.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._serving is not None:
            self.shutdown()
            self._serving.join()
            self._serving = None
        self.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
