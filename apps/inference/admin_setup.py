"""Model profile setup in the admin: the models-folder picker's permission and the trial load.

A mixin for the model profile admin (registered in the bots admin, next to the bots that
use the profiles), so the admin class itself stays a list of fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from apps.inference.engine.base import RemoteSpec
from apps.inference.forms import ModelDownloadForm
from apps.inference.model_download import model_download_progress, model_download_start
from apps.inference.models import ModelProfile
from apps.inference.trial_load import (
    RemoteTrial,
    TrialBusy,
    TrialFailed,
    TrialLoad,
    model_trial_load,
    model_trial_remote,
)


def trial_load_text(trial: TrialLoad) -> str:
    if trial.gpu_layers:
        gpu = gettext("%(offloaded)s of %(layers)s layers on the GPU") % {
            "offloaded": trial.gpu_layers,
            "layers": trial.layers,
        }
    else:
        gpu = gettext("none of %(layers)s layers on the GPU (CPU only)") % {"layers": trial.layers}
    return gettext(
        "Loaded in %(seconds)s s · context %(context)s tokens · %(gpu)s · memory about "
        "%(memory)s per inference process (weights %(weights)s, KV cache %(kv)s)"
    ) % {
        "seconds": f"{trial.load_seconds:.1f}",
        "context": trial.context_size,
        "gpu": gpu,
        "memory": filesizeformat(trial.memory_bytes),
        "weights": filesizeformat(trial.weights_bytes),
        "kv": filesizeformat(trial.kv_cache_bytes),
    }


def remote_trial_text(trial: RemoteTrial) -> str:
    return gettext(
        "The server answered: model list in %(health)s s (%(models)s models), first token "
        "in %(first)s s"
    ) % {
        "health": f"{trial.health_seconds:.2f}",
        "models": len(trial.models),
        "first": f"{trial.first_token_seconds:.2f}",
    }


class ModelProfileSetupAdminMixin(admin.ModelAdmin):
    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        # A subclass per request: the class attribute must not leak into other requests.
        return type(form.__name__, (form,), {"allow_free_path": request.user.is_superuser})

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<int:object_id>/trial-load/",
                self.admin_site.admin_view(require_POST(self.trial_load_view)),
                name="inference_modelprofile_trial_load",
            ),
            path(
                "download/",
                self.admin_site.admin_view(self.download_view),
                name="inference_modelprofile_download",
            ),
            path(
                "download/<str:download_id>/",
                self.admin_site.admin_view(self.download_progress),
                name="inference_modelprofile_download_progress",
            ),
        ]
        return own + super().get_urls()

    def trial_load_view(self, request: HttpRequest, object_id: int) -> JsonResponse:
        """Load the saved profile once and report what it costs (staff who may change it)."""
        profile = ModelProfile.objects.filter(pk=object_id).first()
        if profile is None or not self.has_view_or_change_permission(request, profile):
            raise Http404
        if not self.has_change_permission(request, profile):
            return JsonResponse({"ok": False, "text": gettext("Permission denied.")}, status=403)
        if profile.is_remote:
            return self._trial_remote(profile)
        try:
            trial = model_trial_load(spec=profile.local_spec())
        except TrialBusy:
            text = gettext("Another trial load is running; try again when it has finished.")
            return JsonResponse({"ok": False, "text": text}, status=409)
        except TrialFailed as exc:
            text = gettext("The model did not load: %(error)s") % {"error": exc}
            return JsonResponse({"ok": False, "text": text}, status=422)
        return JsonResponse(
            {
                "ok": True,
                "text": trial_load_text(trial),
                "load_seconds": trial.load_seconds,
                "context_size": trial.context_size,
                "gpu_layers": trial.gpu_layers,
                "layers": trial.layers,
                "memory_bytes": trial.memory_bytes,
            }
        )

    def _trial_remote(self, profile: ModelProfile) -> JsonResponse:
        spec = profile.spec()
        assert isinstance(spec, RemoteSpec)
        try:
            trial = model_trial_remote(spec=spec)
        except TrialFailed as exc:
            text = gettext("The server did not answer: %(error)s") % {"error": exc}
            return JsonResponse({"ok": False, "text": text}, status=422)
        return JsonResponse(
            {
                "ok": True,
                "text": remote_trial_text(trial),
                "first_token_seconds": trial.first_token_seconds,
                "models": list(trial.models),
            }
        )

    @admin.display(description=_("trial load"))
    def trial_load(self, obj: ModelProfile) -> str:
        if not obj.pk:
            return str(_("Available once the profile is saved."))
        return format_html(
            '<button type="button" class="button" data-trial-load-url="{}" '
            'data-busy-label="{}">{}</button> <span id="trial-load-result" class="help">{}</span>',
            reverse(f"{self.admin_site.name}:inference_modelprofile_trial_load", args=[obj.pk]),
            gettext("Loading…"),
            gettext("Test load"),
            gettext("Asks the server for its models and a one-token answer.")
            if obj.is_remote
            else gettext("Loads the saved settings once in the web process and frees them again."),
        )

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: ModelProfile | None = None,
    ) -> HttpResponse:
        if request.user.is_superuser:
            context["model_download_url"] = reverse(
                f"{self.admin_site.name}:inference_modelprofile_download"
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def download_view(self, request: HttpRequest) -> HttpResponse:
        """Superusers only: the server fetches a URL they name, into the models folder."""
        if not request.user.is_superuser:
            raise PermissionDenied
        form = ModelDownloadForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            download_id = model_download_start(
                url=form.cleaned_data["url"],
                sha256=form.cleaned_data["sha256"],
                directory=Path(settings.MODELS_DIR),
                file_name=form.cleaned_data["file_name"],
            )
            return HttpResponseRedirect(f"{request.path}?download={download_id}")
        download_id = request.GET.get("download", "")
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Download a model"),
            "form": form,
            "progress_url": reverse(
                f"{self.admin_site.name}:inference_modelprofile_download_progress",
                args=[download_id],
            )
            if download_id.isalnum()
            else "",
            "models_dir": settings.MODELS_DIR,
        }
        return TemplateResponse(request, "admin/inference/modelprofile/download.html", context)

    def download_progress(self, request: HttpRequest, download_id: str) -> JsonResponse:
        if not request.user.is_superuser:
            raise PermissionDenied
        state = model_download_progress(download_id=download_id)
        if state is None:
            raise Http404
        return JsonResponse({**state, "text": download_text(state)})


DOWNLOAD_ERRORS = {
    "scheme": _("only http and https URLs can be downloaded."),
    "fetch": _("the URL could not be fetched (see the server log)."),
    "interrupted": _("the connection dropped; start the download again to resume it."),
    "digest": _("the SHA-256 does not match, so the file was discarded."),
    "not_gguf": _("the file is not a GGUF model, so it was discarded."),
    "other": _("an unexpected error (see the server log)."),
}


def download_text(state: dict[str, Any]) -> str:
    if state["state"] == "done":
        return gettext("Done: saved as %(path)s. Choose it in a model profile.") % state
    if state["state"] == "failed":
        reason = DOWNLOAD_ERRORS.get(state.get("error", ""), DOWNLOAD_ERRORS["other"])
        return gettext("Failed: %(reason)s") % {"reason": reason}
    done = filesizeformat(state["done"])
    if state["total"]:
        return gettext("Downloading: %(done)s of %(total)s (%(percent)s%%)") % {
            "done": done,
            "total": filesizeformat(state["total"]),
            "percent": state["done"] * 100 // state["total"],
        }
    return gettext("Downloading: %(done)s") % {"done": done}
