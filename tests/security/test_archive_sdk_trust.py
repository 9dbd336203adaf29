"""Issue 9, item 5: which shared library the archive workers load is deployment
configuration, checked before any of its code runs; no form or database row chooses it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from django.urls import reverse

from apps.audit.models import ArchiveSource
from apps.audit.services.archive import archive_pull
from wecom.archive.sdk import SdkLibraryConfig, SdkLibraryRefused, sdk_library_load

# A library whose constructor leaves a trace: loading it at all is code execution.
CONSTRUCTOR_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *marker = getenv("WECOM_TEST_CONSTRUCTOR_MARKER");
    if (marker) { FILE *f = fopen(marker, "w"); if (f) { fputs("ran", f); fclose(f); } }
}
"""


@pytest.fixture
def planted_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(library, marker): a .so whose constructor writes `marker` when it is loaded."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        pytest.skip("no C compiler")
    directory = tmp_path / "vendor"
    directory.mkdir(mode=0o755)
    source = tmp_path / "planted.c"
    source.write_text(CONSTRUCTOR_SOURCE)
    library = directory / "libWeWorkFinanceSdk_C.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    library.chmod(0o755)
    marker = tmp_path / "constructor-ran"
    monkeypatch.setenv("WECOM_TEST_CONSTRUCTOR_MARKER", str(marker))
    return library, marker


def _config(library: Path, **overrides: object) -> SdkLibraryConfig:
    values: dict[str, object] = {
        "path": str(library),
        "allowed_dirs": (str(library.parent),),
        "trusted_uids": frozenset({0, os.geteuid()}),
    }
    values.update(overrides)
    return SdkLibraryConfig(**values)  # type: ignore[arg-type]


def _refused(config: SdkLibraryConfig, marker: Path, match: str) -> None:
    with pytest.raises(SdkLibraryRefused, match=match):
        sdk_library_load(config)
    assert not marker.exists(), "the library's constructor ran although it was refused"


@pytest.mark.django_db
def test_archive_source_has_no_library_path_in_model_or_admin_form(admin_client) -> None:
    # Given an admin who may add archive sources, posting a path of their choosing
    assert "sdk_library_path" not in {f.name for f in ArchiveSource._meta.get_fields()}
    response = admin_client.post(
        reverse("admin:audit_archivesource_add"),
        {
            "name": "总部", "corp_id": "ww1", "enabled": "on", "new_secret": "S3cret",
            "sdk_library_path": "/tmp/evil.so", "proxy": "", "new_proxy_password": "",
            "timeout_seconds": "30", "pull_interval_minutes": "10", "batch_size": "1000",
            "keys-TOTAL_FORMS": "0", "keys-INITIAL_FORMS": "0",
        },
    )  # fmt: skip
    # Then the source is saved but the path went nowhere: the form has no such field
    assert response.status_code == 302, response.content.decode()[:2000]
    page = admin_client.get(reverse("admin:audit_archivesource_add")).content.decode()
    assert 'name="sdk_library_path"' not in page
    assert "ARCHIVE_SDK_LIBRARY" in page


def test_library_in_the_allowed_directory_loads(planted_library) -> None:
    library, marker = planted_library
    digest = hashlib.sha256(library.read_bytes()).hexdigest()
    with pytest.raises(OSError, match="does not export"):
        # It loads (its constructor runs), then lacks the vendor functions.
        sdk_library_load(_config(library, sha256=digest))
    assert marker.exists()


def test_library_outside_the_allowed_directories_is_never_loaded(planted_library, tmp_path):
    library, marker = planted_library
    _refused(
        _config(library, allowed_dirs=(str(tmp_path / "elsewhere"),)),
        marker,
        "ARCHIVE_SDK_ALLOWED_DIRS",
    )
    # Nor through a symlink placed in an allowed directory
    allowed = tmp_path / "allowed"
    allowed.mkdir(mode=0o755)
    (allowed / "libWeWorkFinanceSdk_C.so").symlink_to(library)
    _refused(
        _config(allowed / "libWeWorkFinanceSdk_C.so", allowed_dirs=(str(allowed),)),
        marker,
        "ARCHIVE_SDK_ALLOWED_DIRS",
    )
    _refused(_config(library, path="relative/lib.so"), marker, "absolute")
    _refused(_config(library, path=""), marker, "ARCHIVE_SDK_LIBRARY")


def test_library_writable_by_others_or_not_owned_by_root_is_never_loaded(planted_library):
    library, marker = planted_library
    library.chmod(0o775)
    _refused(_config(library), marker, "writable only by it")
    library.chmod(0o755)
    library.parent.chmod(0o777)
    _refused(_config(library), marker, "writable only by it")
    library.parent.chmod(0o755)
    # Owned by a user that is not trusted (the files belong to whoever runs the tests)
    _refused(_config(library, trusted_uids=frozenset({os.geteuid() + 4242})), marker, "owned")


def test_library_that_is_not_the_pinned_build_is_never_loaded(planted_library) -> None:
    library, marker = planted_library
    _refused(_config(library, sha256="0" * 64), marker, "ARCHIVE_SDK_SHA256")


@pytest.mark.django_db
def test_pull_without_a_configured_library_fails_cleanly(settings) -> None:
    settings.ARCHIVE_SDK_LIBRARY = ""
    source = ArchiveSource.objects.create(name="总部", corp_id="ww1", secret="s")
    result = archive_pull(source_id=source.pk)
    assert "ARCHIVE_SDK_LIBRARY" in result.error and not result.retryable
    source.refresh_from_db()
    assert source.health == ArchiveSource.Health.ERROR


def test_a_second_library_is_not_mistaken_for_the_first(planted_library, tmp_path) -> None:
    # Given one library loaded (and rejected for lacking the vendor functions) ...
    library, _marker = planted_library
    with pytest.raises(OSError, match="does not export"):
        sdk_library_load(_config(library))
    # ... a different one loaded afterwards through a reused descriptor number is itself
    from tests.wecomsdk.build import build_test_sdk

    real = build_test_sdk(tmp_path / "sdk")
    loaded = sdk_library_load(_config(real))
    assert loaded.path == str(real) and loaded.cdll.NewSdk
    assert sdk_library_load(_config(real)) is loaded  # the same file is loaded once
