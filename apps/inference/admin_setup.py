"""Model profile setup in the admin: the models-folder picker's permission and the trial load.

A mixin for the model profile admin (registered in the bots admin, next to the bots that
use the profiles), so the admin class itself stays a list of fields.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import Http404, HttpRequest, JsonResponse
from django.template.defaultfilters import filesizeformat
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from apps.inference.models import ModelProfile
from apps.inference.trial_load import TrialBusy, TrialFailed, TrialLoad, model_trial_load


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
            )
        ]
        return own + super().get_urls()

    def trial_load_view(self, request: HttpRequest, object_id: int) -> JsonResponse:
        """Load the saved profile once and report what it costs (staff who may change it)."""
        profile = ModelProfile.objects.filter(pk=object_id).first()
        if profile is None or not self.has_view_or_change_permission(request, profile):
            raise Http404
        if not self.has_change_permission(request, profile):
            return JsonResponse({"ok": False, "text": gettext("Permission denied.")}, status=403)
        try:
            trial = model_trial_load(spec=profile.spec())
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
            gettext("Loads the saved settings once in the web process and frees them again."),
        )
