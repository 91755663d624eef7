"""A user's own API tokens: create (shown once), list, revoke."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.models import ApiToken
from accounts.tokens import create_api_token


@login_required
def token_list(request: HttpRequest) -> HttpResponse:
    new_token = None
    if request.method == "POST":
        name = request.POST.get("name", "").strip()[:100]
        new_token = create_api_token(user=request.user, name=name)  # type: ignore[arg-type]
    tokens = ApiToken.objects.filter(user=request.user, revoked=False)  # type: ignore[misc]
    return render(request, "accounts/tokens.html", {"tokens": tokens, "new_token": new_token})


@login_required
@require_POST
def token_revoke(request: HttpRequest, prefix: str) -> HttpResponse:
    updated = ApiToken.objects.filter(user=request.user, prefix=prefix).update(revoked=True)  # type: ignore[misc]
    if updated:
        messages.success(request, "Token revoked.")
    else:
        messages.error(request, "No such token.")
    return redirect("accounts:tokens")
