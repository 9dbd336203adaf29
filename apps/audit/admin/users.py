"""Who may do what: changes to users, groups and their permissions are audited too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, Permission, User
from django.db import transaction
from django.db.models import Model
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext, gettext_noop
from django.utils.translation import gettext_lazy as _

from apps.audit import selectors
from apps.audit.admin.mixins import OperatorAuditAdminMixin, request_id_of
from apps.audit.services.accounts import (
    group_delete,
    group_save,
    group_snapshot,
    user_delete,
    user_password_set,
    user_save,
    user_snapshot,
)

_DEFAULT_PERMISSION_NAMES = {
    "add": _("Can add %(model)s"),
    "change": _("Can change %(model)s"),
    "delete": _("Can delete %(model)s"),
    "view": _("Can view %(model)s"),
}


def permission_label(permission: Permission) -> str:
    """A permission as the signed-in admin's language names it.

    Django stores permission names in English when it creates them; the default ones are
    rebuilt from the model's translated verbose name, custom ones (declared with gettext)
    are looked up in the catalogue.
    """
    model = permission.content_type.model_class()
    action, _sep, model_name = permission.codename.partition("_")
    if model is None:
        return f"{permission.content_type.app_label} | {gettext(permission.name)}"
    meta = model._meta
    if action in _DEFAULT_PERMISSION_NAMES and model_name == meta.model_name:
        name = _DEFAULT_PERMISSION_NAMES[action] % {"model": meta.verbose_name}
    else:
        name = gettext(permission.name)
    return f"{meta.app_config.verbose_name} | {meta.verbose_name} | {name}"


# The role presets' names (apps/audit/roles.py), marked for the catalogue.
ROLE_PRESET_NAMES = (
    gettext_noop("IT admin"),
    gettext_noop("Knowledge editor"),
    gettext_noop("Compliance officer"),
    gettext_noop("Auditor"),
)


def group_label(group: Group) -> str:
    """Role presets are stored under their English names and shown translated."""
    return gettext(group.name)


class ScopeGrantGuardMixin:
    """Review scope is granted on the officer-assignment page only (`review_scope_set`).

    The user and group pages neither offer the scope permissions nor groups that carry
    scope, and keep whatever of them a user or group already holds when the form is saved,
    so `change_user` or `change_group` cannot widen anyone's scope, their own included.
    """

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name in ("user_permissions", "permissions"):
            kwargs["queryset"] = Permission.objects.exclude(
                pk__in=selectors.scope_permissions()
            ).select_related("content_type")
        elif db_field.name == "groups":
            kwargs["queryset"] = Group.objects.exclude(pk__in=selectors.scope_groups())
            # A handful of roles: checkboxes, which a plain click cannot clear.
            kwargs["widget"] = forms.CheckboxSelectMultiple
        field = super().formfield_for_manytomany(db_field, request, **kwargs)  # type: ignore[misc]
        if field is not None and db_field.name in ("user_permissions", "permissions"):
            field.label_from_instance = permission_label
        elif field is not None and db_field.name == "groups":
            field.label_from_instance = group_label
            field.label = _("roles (groups)")
            field.help_text = _(
                'A role gives the permissions its job needs (see the README, "Admin role '
                'presets"). Compliance officers also need bots or archive sources assigned.'
            )
        return field

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        obj = form.instance
        if change:
            kept = {
                "user_permissions": lambda: selectors.scope_permissions().filter(user=obj),
                "permissions": lambda: selectors.scope_permissions().filter(group=obj),
                "groups": lambda: selectors.scope_groups().filter(user=obj),
            }
            for name, held in kept.items():
                if name in form.cleaned_data:
                    form.cleaned_data[name] = [*form.cleaned_data[name], *held()]
        super().save_related(request, form, formsets, change)  # type: ignore[misc]


class AuditedUserAdmin(ScopeGrantGuardMixin, OperatorAuditAdminMixin, UserAdmin):
    audit_action_prefix = "auth.user"
    # The role comes first: most admins give a role, not single permissions.
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        (_("Role"), {"fields": ("is_active", "is_staff", "groups")}),
        (_("Personal info"), {"fields": ("first_name", "last_name", "email")}),
        (_("Permissions"), {"fields": ("is_superuser", "user_permissions")}),
        (_("Important dates"), {"fields": ("last_login", "date_joined")}),
    )

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Setting a superuser's password or e-mail would be taking over their scope.
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_delete_permission(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            # A superuser sees every bot and source: only a superuser makes another.
            fields.append("is_superuser")
        return fields

    def user_change_password(
        self, request: HttpRequest, id: str, form_url: str = ""
    ) -> HttpResponse:
        """Django's password page, with the change recorded (that it changed, never how)."""
        with transaction.atomic():
            response = super().user_change_password(request, id, form_url)
            if request.method == "POST" and response.status_code == 302:
                user = self.get_object(request, unquote(id))
                user_password_set(user=user, actor=request.user, request_id=request_id_of(request))
        return response

    def audit_snapshot(self, obj: Model | None) -> dict[str, Any] | None:
        return user_snapshot(obj)

    def audit_save(
        self, request: HttpRequest, obj: Any, form: Any, change: bool, related: Callable[[], None]
    ) -> None:
        user_save(user=obj, actor=request.user, related=related, request_id=request_id_of(request))

    def audit_delete(self, request: HttpRequest, obj: Any) -> None:
        user_delete(user=obj, actor=request.user, request_id=request_id_of(request))


class AuditedGroupAdmin(ScopeGrantGuardMixin, OperatorAuditAdminMixin, GroupAdmin):
    audit_action_prefix = "auth.group"

    def audit_snapshot(self, obj: Model | None) -> dict[str, Any] | None:
        return group_snapshot(obj)

    def audit_save(
        self, request: HttpRequest, obj: Any, form: Any, change: bool, related: Callable[[], None]
    ) -> None:
        group_save(
            group=obj, actor=request.user, related=related, request_id=request_id_of(request)
        )

    def audit_delete(self, request: HttpRequest, obj: Any) -> None:
        group_delete(group=obj, actor=request.user, request_id=request_id_of(request))


admin.site.unregister(User)
admin.site.register(User, AuditedUserAdmin)
admin.site.unregister(Group)
admin.site.register(Group, AuditedGroupAdmin)
