from django.contrib import admin

from apps.knowledge.models import DirectoryUser


@admin.register(DirectoryUser)
class DirectoryUserAdmin(admin.ModelAdmin):
    list_display = ("userid", "name", "department_list", "updated_at")
    search_fields = ("userid", "name")

    @admin.display(description=DirectoryUser._meta.get_field("departments").verbose_name)
    def department_list(self, obj: DirectoryUser) -> str:
        return ", ".join(obj.departments)
