"""Model profile setup: the models-folder picker and the trial load with the real small model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from apps.inference import trial_load
from apps.inference.models import ModelProfile

pytestmark = pytest.mark.django_db

ADD = "admin:inference_modelprofile_add"
TRIAL = "admin:inference_modelprofile_trial_load"


def _form(**overrides):
    data = {
        "name": "picked",
        "gguf_file": "",
        "gguf_path": "",
        "context_size": 2048,
        "n_gpu_layers": 0,
        "batch_size": 512,
        "slots": 1,
        "prefix_cache_size": 0,
        "temperature": 0.7,
        "top_p": 0.95,
        "top_k": 40,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
    }
    data.update(overrides)
    return data


@pytest.fixture
def models_dir(settings, tmp_path, model_profile) -> Path:
    """A models folder holding the real model (linked), one in a subfolder, and a non-model."""
    folder = tmp_path / "models"
    (folder / "qwen").mkdir(parents=True)
    os.symlink(model_profile.gguf_path, folder / "small.gguf")
    (folder / "qwen" / "other.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    (folder / "notes.txt").write_text("not a model")
    settings.MODELS_DIR = str(folder)
    return folder


def _staff(*codenames: str) -> Client:
    user = User.objects.create_user("clerk", password="x-Very-Long-Pass-1", is_staff=True)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client


def test_the_form_offers_the_gguf_files_of_the_models_folder(admin_client, models_dir):
    page = admin_client.get(reverse(ADD)).content.decode()
    assert f'value="{models_dir / "small.gguf"}"' in page
    assert f'value="{models_dir / "qwen" / "other.gguf"}"' in page
    assert "notes.txt" not in page


def test_a_chosen_file_becomes_the_profile_path(admin_client, models_dir):
    chosen = str(models_dir / "small.gguf")
    response = admin_client.post(reverse(ADD), _form(gguf_file=chosen))
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert ModelProfile.objects.get(name="picked").gguf_path == chosen


def test_a_file_outside_the_folder_cannot_be_chosen(admin_client, models_dir, tmp_path):
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(b"GGUF")
    response = admin_client.post(reverse(ADD), _form(gguf_file=str(outside)))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["gguf_file"]


def test_only_superusers_may_type_a_free_path(models_dir, model_profile):
    clerk = _staff("add_modelprofile", "change_modelprofile", "view_modelprofile")
    typed = _form(gguf_path=model_profile.gguf_path)
    response = clerk.post(reverse(ADD), typed, HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["gguf_path"]
    assert any("only superusers" in error for error in errors), errors
    # The same person may pick from the folder
    chosen = _form(gguf_file=str(models_dir / "small.gguf"))
    assert clerk.post(reverse(ADD), chosen).status_code == 302
    # ... and keep an existing profile's path outside the folder when editing it
    edit = _form(name=model_profile.name, gguf_path=model_profile.gguf_path)
    change = reverse("admin:inference_modelprofile_change", args=[model_profile.pk])
    assert clerk.post(change, edit).status_code == 302


def test_neither_a_choice_nor_a_path_is_refused(admin_client, models_dir):
    response = admin_client.post(reverse(ADD), _form(), HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["gguf_path"]


def test_trial_load_reports_time_context_gpu_layers_and_memory(admin_client, model_profile):
    response = admin_client.post(
        reverse(TRIAL, args=[model_profile.pk]), HTTP_ACCEPT_LANGUAGE="zh-hans"
    )
    assert response.status_code == 200
    report = response.json()
    assert report["ok"] is True
    assert report["context_size"] == 2048
    assert report["layers"] == 30  # SmolLM2-135M
    assert report["gpu_layers"] == 0  # the profile asks for none
    assert report["load_seconds"] > 0
    weights = Path(model_profile.gguf_path).stat().st_size
    assert weights * 0.8 < report["memory_bytes"]
    assert "加载用时" in report["text"] and "2048" in report["text"]


def test_trial_load_counts_the_kv_cache_of_every_slot_and_cached_prompt(model_profile):
    model_profile.slots, model_profile.prefix_cache_size = 1, 2  # one slot caches no prompts
    single = trial_load.model_trial_load(spec=model_profile.spec())
    model_profile.slots, model_profile.prefix_cache_size = 2, 1
    batched = trial_load.model_trial_load(spec=model_profile.spec())
    assert batched.kv_cache_bytes == 3 * single.kv_cache_bytes
    assert batched.weights_bytes == single.weights_bytes


def test_trial_load_of_a_broken_file_says_so(admin_client, model_profile, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\xff" * 256)
    ModelProfile.objects.filter(pk=model_profile.pk).update(gguf_path=str(broken))
    response = admin_client.post(reverse(TRIAL, args=[model_profile.pk]), HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 422
    assert response.json()["ok"] is False
    assert "did not load" in response.json()["text"]


def test_a_second_trial_load_waits_its_turn(admin_client, model_profile):
    # A trial running in another request cannot be timed reliably: hold its lock instead.
    assert trial_load._trial_lock.acquire(blocking=False)
    try:
        response = admin_client.post(reverse(TRIAL, args=[model_profile.pk]))
    finally:
        trial_load._trial_lock.release()
    assert response.status_code == 409


def test_trial_load_permissions_and_method(client, admin_client, model_profile):
    url = reverse(TRIAL, args=[model_profile.pk])
    anonymous = client.post(url)
    assert anonymous.status_code == 302 and "login" in anonymous["Location"]
    assert _staff().post(url).status_code == 404
    User.objects.filter(username="clerk").delete()
    assert _staff("view_modelprofile").post(url).status_code == 403
    assert admin_client.get(url).status_code == 405
    assert admin_client.post(reverse(TRIAL, args=[model_profile.pk + 999])).status_code == 404


def test_trial_load_checks_the_csrf_token(admin_user, model_profile):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(reverse(TRIAL, args=[model_profile.pk])).status_code == 403


def test_the_change_page_has_the_test_load_button(admin_client, model_profile):
    url = reverse("admin:inference_modelprofile_change", args=[model_profile.pk])
    page = admin_client.get(url).content.decode()
    assert f'data-trial-load-url="{reverse(TRIAL, args=[model_profile.pk])}"' in page
