"""Server-rendered pages for deployments. Views call the same services as the API."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from config.errors import NotFoundError, PlatformError
from deployments import queries, services
from deployments.backends import get_backend, uses_images
from deployments.examples import infer_curl
from deployments.forms import (
    AddVariantForm,
    AutoscalingForm,
    DeploymentCreateForm,
    RolloutForm,
    ScaleForm,
    VersionForm,
)
from deployments.inputs import VariantSpec, VersionTarget
from deployments.models import Worker
from deployments.services.batching import propose_batching
from deployments.services.images import latest_image_of, rebuild_worker_image
from inference_worker.contracts.batching import BATCHING
from registry import queries as registry_queries
from registry.audit import Actor


@login_required
def deployment_list(request: HttpRequest) -> HttpResponse:
    rows = list(queries.deployments().order_by("name"))
    for deployment in rows:
        for variant in deployment.variants.all():
            setattr(variant, "ready_count", queries.ready_replicas(variant))  # noqa: B010
    return render(
        request,
        "deployments/deployment_list.html",
        {"deployments": rows, "gateway": settings.KILN_GATEWAY_URL},
    )


@login_required
def deployment_create(request: HttpRequest, name: str, number: int) -> HttpResponse:
    version = registry_queries.version_for_change(name, number, request.user)
    budget = _budget(request)
    proposal = propose_batching(version.report or {}, latency_budget_ms=budget, target_rps=_target(request))
    initial = {
        **{option: BATCHING[option].to_text(value) for option, value in proposal.batching.values().items()},
        "version": version.version,
        "name": version.model.name,
        "replicas": 1,
        "device": "cpu",
    }
    for field in (*BATCHING, "replicas"):  # a link from the serving advice carries its exact options
        if request.GET.get(field):
            initial[field] = request.GET[field]
    note = proposal.note
    form = DeploymentCreateForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            deployment = services.create_deployment(
                name=form.cleaned_data["name"],
                model=version.model,
                variants=[form.variant()],
                actor=request.user,  # type: ignore[arg-type]
                description=form.cleaned_data["description"],
                latency_budget_ms=budget,
            )
        except PlatformError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"Deployment {deployment.name} created; replicas are starting.")
            return redirect("deployments:detail", name=deployment.name)
    context = {"version": version, "model": version.model, "form": form, "note": note, "budget": budget}
    return render(request, "deployments/deployment_create.html", context, status=400 if form.errors else 200)


def _target(request: HttpRequest) -> float | None:
    """The throughput target the serving advice was asked for, if the page came from it."""
    try:
        value = float(request.GET.get("target_rps") or "nan")
    except ValueError:
        return None
    return value if 1.0 <= value <= 1e9 else None


def _budget(request: HttpRequest) -> float:
    try:
        value = float(request.GET.get("latency_budget_ms") or settings.KILN_LATENCY_BUDGET_MS)
    except ValueError:
        return float(settings.KILN_LATENCY_BUDGET_MS)
    return min(max(value, 0.1), 60_000.0)


def _live_context(request: HttpRequest, name: str) -> dict[str, Any]:
    """What the live part of the page shows (it refreshes every few seconds): status, variants, workers."""
    deployment = queries.get_deployment(name)
    variants = list(deployment.variants.all())
    for variant in variants:
        image = latest_image_of(variant) if uses_images(variant.backend) else None
        setattr(variant, "worker_image", image)  # noqa: B010
        setattr(variant, "cold_start_s", queries.cold_start_s(variant.version_id))  # noqa: B010
    return {
        "deployment": deployment,
        "variants": variants,
        "signature_warnings": queries.signature_warnings(deployment),
        "can_change": deployment.model.can_change(request.user),
    }


def _detail_context(request: HttpRequest, name: str) -> dict[str, Any]:
    from registry.queries import audit_events

    context = _live_context(request, name)
    deployment = context["deployment"]
    return {
        **context,
        "gateway": settings.KILN_GATEWAY_URL,
        "curl_example": _curl_example(deployment, context["variants"]),
        "gateway_grpc": settings.KILN_GATEWAY_GRPC_TARGET,
        "events": audit_events().filter(subject=f"deployment/{name}")[:30],
        "scale_form": ScaleForm(),
        "autoscaling_forms": [(v, _autoscaling_form(v)) for v in context["variants"]],
        "version_form": VersionForm(),
        "add_form": AddVariantForm(),
        "new_variant_name": _unused_name({v.name for v in context["variants"]}),
        "rollout_form": RolloutForm(),
        "history": deployment.traffic_changes.all()[:50],
        "rollouts": deployment.rollouts.select_related("candidate", "baseline")[:20],
        "shadow": _shadow_numbers(deployment),
    }


def _autoscaling_form(variant: Any) -> AutoscalingForm:
    policy = services.policy_of(variant)
    initial = policy.values() if policy is not None else {}
    return AutoscalingForm(initial=initial, auto_id=f"autoscaling-{variant.name}-%s")


def _unused_name(taken: set[str]) -> str:
    """The name the "Add a variant" form proposes: ``candidate``, else the first free ``candidate-N``."""
    return next(n for n in ("candidate", *(f"candidate-{i}" for i in range(2, 1000))) if n not in taken)


def _curl_example(deployment: Any, variants: list[Any]) -> str:
    """The request to copy, from the signature of the version the first variant serves."""
    served = next((v.version for v in variants if v.version_id is not None), None)
    signature = served.signature if served is not None else {}
    return infer_curl(gateway=settings.KILN_GATEWAY_URL, deployment=deployment.name, signature=signature)


def _shadow_numbers(deployment: Any) -> dict[str, Any]:
    from deployments.series import gateway_numbers

    return {name: n["shadow"] for name, n in gateway_numbers(deployment).items() if n.get("shadow")}


@login_required
def deployment_detail(request: HttpRequest, name: str) -> HttpResponse:
    return render(request, "deployments/deployment_detail.html", _detail_context(request, name))


@login_required
def deployment_workers_fragment(request: HttpRequest, name: str) -> HttpResponse:
    """The live part of the deployment page, re-fetched by the page every few seconds."""
    return render(request, "deployments/_live.html", _live_context(request, name))


def act_on_deployment(request: HttpRequest, name: str, action: Any, success: Any) -> HttpResponse:
    """Run ``action(deployment, user)`` if the user may change it; flash the outcome; back to its page.

    ``success`` is the message, or a function of what the action returned that words it.
    """
    try:
        result = action(queries.deployment_for_change(name, request.user), request.user)
    except NotFoundError:
        raise
    except PlatformError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, success(result) if callable(success) else success)
    return redirect("deployments:detail", name=name)


@login_required
@require_POST
def deployment_stop(request: HttpRequest, name: str) -> HttpResponse:
    return act_on_deployment(
        request,
        name,
        lambda d, u: services.set_deployment_running(deployment=d, running=False, actor=u),
        "Stopping: workers drain, then stop.",
    )


@login_required
@require_POST
def deployment_start(request: HttpRequest, name: str) -> HttpResponse:
    return act_on_deployment(
        request,
        name,
        lambda d, u: services.set_deployment_running(deployment=d, running=True, actor=u),
        "Starting the replicas again.",
    )


@login_required
@require_POST
def deployment_delete(request: HttpRequest, name: str) -> HttpResponse:
    deployment = queries.deployment_for_change(name, request.user, deleting_ok=True)
    services.delete_deployment(deployment=deployment, actor=request.user)
    messages.success(
        request, f"Deployment {name} no longer takes traffic; it is deleted once its workers have drained."
    )
    return redirect("deployments:list")


@login_required
@require_POST
def variant_scale(request: HttpRequest, name: str, variant: str) -> HttpResponse:
    form = ScaleForm(request.POST)
    row = queries.get_variant(name, variant)

    def act(_d: Any, user: Actor) -> None:
        if not form.is_valid():
            raise PlatformError("replicas: a number from 0 to 64")
        services.scale_variant(variant=row, replicas=form.cleaned_data["replicas"], actor=user)

    return act_on_deployment(request, name, act, f"Scaling {variant}.")


@login_required
@require_POST
def variant_autoscaling(request: HttpRequest, name: str, variant: str) -> HttpResponse:
    """Set a variant's autoscaling policy, or turn it off (``off`` in the form)."""
    form = AutoscalingForm(request.POST)
    row = queries.get_variant(name, variant)

    def act(_d: Any, user: Actor) -> None:
        if "off" in request.POST:
            services.remove_autoscaling(variant=row, actor=user)
            return
        if not form.is_valid():
            field, errors = next(iter(form.errors.items()))
            raise PlatformError(f"{field}: {' '.join(str(e) for e in errors)}")
        services.set_autoscaling(variant=row, policy=form.policy(), actor=user)

    return act_on_deployment(request, name, act, f"Autoscaling of {variant} saved.")


@login_required
@require_POST
def variant_version(request: HttpRequest, name: str, variant: str) -> HttpResponse:
    form = VersionForm(request.POST)
    row = queries.get_variant(name, variant)

    def act(_d: Any, user: Actor) -> None:
        if not form.is_valid():
            raise PlatformError("give a version number or an alias")
        target = VersionTarget.parse(form.cleaned_data)
        services.set_variant_version(variant=row, target=target, actor=user)

    return act_on_deployment(request, name, act, f"Rolling {variant} to the new version.")


@login_required
@require_POST
def variant_add(request: HttpRequest, name: str) -> HttpResponse:
    form = AddVariantForm(request.POST)

    def act(deployment: Any, user: Actor) -> None:
        if not form.is_valid():
            raise PlatformError("; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in form.errors.items()))
        raw = {k: v for k, v in form.cleaned_data.items() if v not in (None, "")}
        services.add_variant(deployment=deployment, spec=VariantSpec.parse(raw), actor=user)

    return act_on_deployment(request, name, act, "Variant added at weight 0; its replicas are starting.")


@login_required
@require_POST
def variant_rebuild_image(request: HttpRequest, name: str, variant: str) -> HttpResponse:
    row = queries.get_variant(name, variant)
    return act_on_deployment(
        request,
        name,
        lambda _d, user: rebuild_worker_image(variant=row, actor=user),
        f"Building the worker image of {variant} again.",
    )


@login_required
def worker_logs(request: HttpRequest, name: str, worker_id: int) -> HttpResponse:
    worker = (
        Worker.objects.select_related("variant__deployment")
        .filter(pk=worker_id, variant__deployment__name=name)
        .first()
    )
    if worker is None:
        raise PlatformError(f"deployment {name!r} has no worker {worker_id}", code="not_found")
    text = (
        get_backend(worker.backend).logs(worker.handle, log_path=worker.log_path, tail=300)
        if worker.handle
        else ""
    )
    return render(
        request, "deployments/worker_logs.html", {"worker": worker, "text": text or worker.last_error}
    )
