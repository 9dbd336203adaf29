"""List filters whose choices are limited to what the officer is assigned to.

Every filter an officer sees is scoped like the rows it filters: a plain foreign-key filter
would list every policy or user in the database, so those use `RelatedOnlyFieldListFilter`
(choices read from the admin's scoped queryset) and the others read their choices from the
officer's assignments or scoped rows.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import F, Func, Q, QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from apps.audit import selectors


class ReviewBotFilter(admin.SimpleListFilter):
    """Only the bots the officer is assigned to appear as choices."""

    title = _("bot")
    parameter_name = "bot"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return [(b.pk, b.name) for b in selectors.bots_reviewable_by(user=request.user)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(bot_id=self.value()) if self.value() else queryset


class ReviewDepartmentFilter(admin.SimpleListFilter):
    """Cases about people of one department (the asking employee or the archived sender)."""

    title = _("department")
    parameter_name = "department"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        # Only departments of people in the cases the user sees: the names of other teams'
        # departments are not the officer's to learn.
        from apps.directory.models import DirectoryUser

        cases = model_admin.get_queryset(request)
        people = DirectoryUser.objects.filter(
            Q(userid__in=cases.values("turn__conversation__userid"))
            | Q(userid__in=cases.values("archived_message__sender"))
        )
        departments = (
            people.annotate(department=Func(F("departments"), function="unnest"))
            .values_list("department", flat=True)
            .distinct()
            .order_by("department")
        )
        return [(department, department) for department in departments]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if not self.value():
            return queryset
        from apps.directory.models import DirectoryUser

        people = DirectoryUser.objects.filter(departments__contains=[self.value()]).values("userid")
        return queryset.filter(
            Q(turn__conversation__userid__in=people) | Q(archived_message__sender__in=people)
        )


class ArchiveSourceScopeFilter(admin.SimpleListFilter):
    """Only the sources the officer is assigned to appear as choices."""

    title = _("archive source")
    parameter_name = "source"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return [(s.pk, s.name) for s in selectors.sources_reviewable_by(user=request.user)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(source_id=self.value()) if self.value() else queryset


class ReviewSourceFilter(ArchiveSourceScopeFilter):
    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(archive_source_id=self.value()) if self.value() else queryset
