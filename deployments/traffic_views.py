"""Web controls for traffic: the split (with quick toggles), promote, restore, shadow, rollouts."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_POST

from config.errors import PlatformError
from deployments import queries
from deployments.errors import RolloutNotFoundError
from deployments.forms import RolloutForm
from deployments.inputs import Split
from deployments.models import Rollout
from deployments.services import promotion, rollouts, traffic
from deployments.views import act_on_deployment


def _run(request: HttpRequest, name: str, action: Any, success: Any) -> HttpResponse:
    return act_on_deployment(request, name, lambda deployment, _user: action(deployment), success)


@login_required
@require_POST
def set_split(request: HttpRequest, name: str) -> HttpResponse:
    """``weight-<variant>`` fields, or a quick toggle ``preset=90,10`` in variant order."""

    def act(deployment: Any) -> None:
        rows = list(deployment.variants.order_by("id").values_list("name", "shadow_percent"))
        names = [name for name, _ in rows]
        preset = request.POST.get("preset", "")
        try:
            if preset:
                weights = [int(x) for x in preset.split(",")]
                live = [name for name, shadow_percent in rows if not shadow_percent]
                split: dict[str, Any] = dict.fromkeys(names, 0)
                split.update(zip(live, weights, strict=False))
            else:
                split = {n: int(request.POST.get(f"weight-{n}", "0") or 0) for n in names}
        except ValueError:
            raise PlatformError("split: weights must be whole numbers") from None
        traffic.set_traffic_split(
            deployment=deployment,
            split=Split.parse(split, shadows=dict(rows)),
            actor=request.user,
            reason=request.POST.get("reason", "")[:2000],
        )

    return _run(request, name, act, "Traffic split applied.")


@login_required
@require_POST
def promote(request: HttpRequest, name: str, variant: str) -> HttpResponse:
    return _run(
        request,
        name,
        lambda d: promotion.promote_variant(
            deployment=d, variant_name=variant, actor=request.user, reason=request.POST.get("reason", "")
        ),
        f"{variant} promoted (forced): the stable variant takes its version, then the traffic.",
    )


@login_required
@require_POST
def restore(request: HttpRequest, name: str, change_id: int) -> HttpResponse:
    return _run(
        request,
        name,
        lambda d: traffic.restore_split(deployment=d, change_id=change_id, actor=request.user),
        "Earlier split restored.",
    )


@login_required
@require_POST
def shadow(request: HttpRequest, name: str, variant: str) -> HttpResponse:
    def act(deployment: Any) -> None:
        try:
            percent = int(request.POST.get("percent", "0"))
        except ValueError:
            raise PlatformError("shadow_percent: a whole number from 0 to 100") from None
        traffic.set_shadow(variant=queries.get_variant(name, variant), percent=percent, actor=request.user)

    return _run(request, name, act, f"Shadow traffic for {variant} updated.")


@login_required
@require_POST
def start_rollout(request: HttpRequest, name: str) -> HttpResponse:
    def act(deployment: Any) -> None:
        form = RolloutForm(request.POST)
        if not form.is_valid():
            raise PlatformError("; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in form.errors.items()))
        rollouts.start_rollout(deployment=deployment, policy=form.policy(), actor=request.user)

    return _run(request, name, act, "Rollout started; beat advances it after each hold.")


@login_required
@require_POST
def control_rollout(request: HttpRequest, name: str, rollout_id: int, command: str) -> HttpResponse:
    def act(deployment: Any) -> None:
        rollout = Rollout.objects.filter(deployment=deployment, pk=rollout_id).first()
        if rollout is None:
            raise RolloutNotFoundError(f"deployment {name!r} has no rollout {rollout_id}")
        rollouts.control_rollout(rollout=rollout, command=command, actor=request.user)

    return _run(request, name, act, f"Rollout {command}d." if command != "abort" else "Rollout aborted.")
