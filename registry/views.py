"""Server-rendered web UI for the registry. Views call the same services as the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from config.errors import PlatformError
from registry import hooks, queries, services
from registry.errors import ArtifactTooLargeError
from registry.forms import AliasForm, LabelsForm, ModelCreateForm, ToleranceForm, UploadForm
from registry.models import VersionStatus
from registry.search import ModelFilters
from registry.signature import UNSCORED_DTYPES
from registry.uploads import HashedTempUploadedFile

MODELS_PER_PAGE = 50


@login_required
def model_list(request: HttpRequest) -> HttpResponse:
    """One page of models, narrowed by the same filters as ``/api/v1/models/``."""
    try:
        filters = ModelFilters.from_params(request.GET)
    except PlatformError as exc:
        messages.error(request, exc.message)
        filters = ModelFilters()
    models = filters.apply(queries.models_with_counts()).order_by("name")
    page = Paginator(models, MODELS_PER_PAGE).get_page(request.GET.get("page"))
    busy = any(
        getattr(m, "latest_status", None) in (VersionStatus.REGISTERED, VersionStatus.CONVERTING)
        for m in page
    )
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "page": page,
        "busy": busy,
        "filters": filters,
        "states": VersionStatus.choices,
        "query": query.urlencode(),
        "any_model": filters.active or page.paginator.count > 0,
    }
    return render(request, "registry/model_list.html", context)


@login_required
def model_create(request: HttpRequest) -> HttpResponse:
    form = ModelCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            model = services.create_model(owner=request.user, **form.cleaned_data)  # type: ignore[arg-type]
        except PlatformError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"Model {model.name} created. Upload its first version.")
            return redirect("registry:version-upload", name=model.name)
    return render(request, "registry/model_create.html", {"form": form})


@login_required
def model_detail(request: HttpRequest, name: str) -> HttpResponse:
    model = queries.get_model(name)
    versions = queries.versions().filter(model=model).order_by("-version")
    page = Paginator(versions, 50).get_page(request.GET.get("page"))
    aliases = model.aliases.select_related("version", "updated_by").order_by("name")
    context = {
        "model": model,
        "page": page,
        "aliases": aliases,
        "alias_form": AliasForm(initial={"version": versions.values_list("version", flat=True).first()}),
        "can_change": model.can_change(request.user),
        "busy": any(v.is_busy for v in page),
        "events": queries.audit_events().filter(model=model)[:20],
    }
    return render(request, "registry/model_detail.html", context)


@login_required
def version_upload(request: HttpRequest, name: str) -> HttpResponse:
    model = queries.model_for_change(name, request.user)
    form = UploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST":
        if getattr(request, "upload_too_large", False):
            form.add_error("file", ArtifactTooLargeError(_limit_message()).message)
        elif form.is_valid():
            upload, external = form.cleaned_data["file"], form.cleaned_data["external_data"]
            try:
                if not isinstance(upload, HashedTempUploadedFile):
                    raise PlatformError("file: upload the artifact as a file")
                if external is not None and not isinstance(external, HashedTempUploadedFile):
                    raise PlatformError("external_data: upload the data file as a file")
                version = services.register_version(
                    model=model,
                    upload_path=Path(upload.temporary_file_path()),
                    actor=request.user,  # type: ignore[arg-type]
                    signature=form.cleaned_data["signature"],
                    description=form.cleaned_data["description"],
                    metadata=form.metadata(),
                    class_labels=form.cleaned_data["class_labels"],
                    tolerance=form.tolerance(),
                    external_data=None if external is None else Path(external.temporary_file_path()),
                ).version
            except PlatformError as exc:
                fields = {"invalid_signature": "signature", "invalid_labels": "class_labels"}
                field = fields.get(exc.code, "file")
                form.add_error(field, exc.message)
            else:
                messages.success(request, f"Version {version.version} registered; conversion is queued.")
                earlier = queries.same_bytes_as(version)
                if earlier is not None:
                    messages.warning(
                        request,
                        f"These are the same bytes as v{earlier.version} "
                        f"(sha256 {version.source_sha256[:12]}…): v{version.version} is a copy of it.",
                    )
                return redirect("registry:version-detail", name=name, number=version.version)
    status = 400 if request.method == "POST" else 200
    return render(request, "registry/version_upload.html", {"model": model, "form": form}, status=status)


def _limit_message() -> str:
    from django.conf import settings

    return f"larger than the upload limit of {settings.KILN_MAX_UPLOAD_BYTES} bytes"


@login_required
def version_detail(request: HttpRequest, name: str, number: int) -> HttpResponse:
    version = queries.get_version(name, number)
    report: dict[str, Any] = version.report or {}
    outputs = version.signature.get("outputs") or []
    first = next((o.get("name", "") for o in outputs if o.get("dtype") not in UNSCORED_DTYPES), "")
    context = {
        "model": version.model,
        "version": version,
        "report": report,
        "parity": report.get("parity") or {},
        "profile": (report.get("profile") or {}).get("batches") or [],
        "can_change": version.model.can_change(request.user),
        "alias_form": AliasForm(initial={"version": version.version}),
        "ci_run_url": _safe_url(version.metadata.get("ci_run_url")),
        "statuses": VersionStatus,
        "profile_json": json.dumps((report.get("profile") or {}).get("batches") or []),
        "live": _live_numbers(request, version.pk),
        "profiled_shapes": _profiled_shapes(version.signature, report),
        "labels_form": LabelsForm(initial={"class_labels": LabelsForm.text_of(version.class_labels, first)}),
    }
    return render(request, "registry/version_detail.html", context)


def _profiled_shapes(signature: dict[str, Any], report: dict[str, Any]) -> list[str]:
    """The shapes the checks ran inputs with dynamic dimensions besides the batch at ("tokens [batch, 8]")."""
    shapes = (report.get("warmup") or {}).get("shapes") or {}
    dynamic = [
        spec.get("name")
        for spec in signature.get("inputs") or []
        if any(not isinstance(d, int) or d < 0 for d in (spec.get("shape") or [])[1:])
    ]
    return [
        f"{name} [{', '.join('batch' if i == 0 else str(d) for i, d in enumerate(shapes[name]))}]"
        for name in dynamic
        if isinstance(shapes.get(name), list)
    ]


def _live_numbers(request: HttpRequest, version_id: int) -> list[dict[str, Any]] | None:
    """Staff see the deployments serving the version with their numbers (like the dashboard)."""
    if not getattr(request.user, "is_staff", False):
        return None
    rows: list[dict[str, Any]] = []
    for found in hooks.version_serving.call(version_id=version_id):
        rows.extend(found or [])
    return rows


def _safe_url(value: Any) -> str | None:
    """Only http(s) links are rendered as links (a ``javascript:`` URL stays text)."""
    if isinstance(value, str) and value.lower().startswith(("https://", "http://")):
        return value
    return None


@login_required
@require_POST
def alias_set(request: HttpRequest, name: str) -> HttpResponse:
    model = queries.model_for_change(name, request.user)
    form = AliasForm(request.POST)
    if form.is_valid():
        try:
            services.set_alias(
                model=model,
                name=form.cleaned_data["alias"],
                version_number=form.cleaned_data["version"],
                actor=request.user,
            )
        except PlatformError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(
                request, f"{form.cleaned_data['alias']} now points at version {form.cleaned_data['version']}."
            )
    else:
        messages.error(request, "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in form.errors.items()))
    next_url = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(next_url, allowed_hosts=None) and next_url.startswith("/"):
        return redirect(next_url)
    return redirect("registry:model-detail", name=name)


@login_required
@require_POST
def alias_delete(request: HttpRequest, name: str, alias: str) -> HttpResponse:
    model = queries.model_for_change(name, request.user)
    try:
        services.delete_alias(model=model, name=alias, actor=request.user)
    except PlatformError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Alias {alias} removed.")
    return redirect("registry:model-detail", name=name)


@login_required
@require_POST
def version_convert(request: HttpRequest, name: str, number: int) -> HttpResponse:
    version = queries.version_for_change(name, number, request.user)
    form = ToleranceForm(request.POST)
    if not form.is_valid():
        for field, errors in form.errors.items():
            messages.error(request, f"{form.fields[field].label}: {' '.join(str(e) for e in errors)}")
        return redirect("registry:version-detail", name=name, number=number)
    try:
        services.request_conversion(version=version, actor=request.user, tolerance=form.tolerance())
    except PlatformError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Conversion queued.")
    return redirect("registry:version-detail", name=name, number=number)


@login_required
@require_POST
def version_labels(request: HttpRequest, name: str, number: int) -> HttpResponse:
    version = queries.version_for_change(name, number, request.user)
    form = LabelsForm(request.POST)
    try:
        if not form.is_valid():
            raise PlatformError("; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in form.errors.items()))
        services.update_version(
            version=version, actor=request.user, class_labels=form.cleaned_data["class_labels"]
        )
    except PlatformError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Class labels saved; the version's workers take them as a rolling update.")
    return redirect("registry:version-detail", name=name, number=number)


@login_required
@require_POST
def version_delete(request: HttpRequest, name: str, number: int) -> HttpResponse:
    version = queries.version_for_change(name, number, request.user)
    try:
        services.delete_version(version=version, actor=request.user)
    except PlatformError as exc:
        messages.error(request, exc.message)
        return redirect("registry:version-detail", name=name, number=number)
    messages.success(request, f"Version {number} of {name} deleted.")
    return redirect("registry:model-detail", name=name)


@login_required
@require_POST
def model_delete(request: HttpRequest, name: str) -> HttpResponse:
    model = queries.model_for_change(name, request.user)
    try:
        services.delete_model(model=model, actor=request.user)
    except PlatformError as exc:
        messages.error(request, exc.message)
        return redirect("registry:model-detail", name=name)
    messages.success(request, f"Model {name} deleted.")
    return redirect("registry:model-list")


@login_required
def audit_list(request: HttpRequest) -> HttpResponse:
    events = queries.audit_events()
    if model := request.GET.get("model"):
        events = events.filter(model__name=model)
    page = Paginator(events, 100).get_page(request.GET.get("page"))
    return render(request, "registry/audit_list.html", {"page": page, "model_filter": model or ""})
