from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


class AuditConfig(AppConfig):
    name = "apps.audit"
    verbose_name = _("Audit")

    def ready(self) -> None:
        from apps.audit.db_roles import post_migrate_grant

        # Infrastructure, not business logic: whoever runs `migrate` (make run, compose,
        # the test run) leaves the app role with exactly its privileges.
        post_migrate.connect(post_migrate_grant, sender=self, dispatch_uid="audit.app_role_grant")
        from apps.audit.roles import post_migrate_role_presets

        # Seeding, like Django's permissions: the role presets survive a flush.
        post_migrate.connect(
            post_migrate_role_presets, sender=self, dispatch_uid="audit.role_presets"
        )
