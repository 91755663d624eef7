from django.contrib import admin

from accounts.models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin[ApiToken]):
    list_display = ("user", "name", "prefix", "created_at", "last_used_at", "expires_at", "revoked")
    list_filter = ("revoked",)
    search_fields = ("user__username", "name", "prefix")
    readonly_fields = ("user", "prefix", "digest", "created_at", "last_used_at")
    actions = ("revoke",)

    def has_add_permission(self, request: object) -> bool:
        # Tokens are shown once at creation: use `manage.py create_api_token` or the API.
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: object, queryset: object) -> None:
        queryset.update(revoked=True)  # type: ignore[attr-defined]
