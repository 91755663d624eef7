"""Web forms for deployments. They validate shape; services decide the rest."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from deployments.backends import BACKEND_NAMES
from deployments.inputs import RolloutPolicy


class BatchingFields(forms.Form):
    max_batch_size = forms.IntegerField(min_value=1, max_value=4096)
    max_queue_delay_ms = forms.FloatField(min_value=0, max_value=1000, label="Max queue delay (ms)")
    preferred_batch_sizes = forms.CharField(required=False, help_text="comma-separated, e.g. 8,16")
    max_queue_size = forms.IntegerField(min_value=1, max_value=100_000)
    request_timeout_ms = forms.FloatField(min_value=1, max_value=600_000, label="Request timeout (ms)")
    instances = forms.IntegerField(
        min_value=1, max_value=16, help_text="model sessions running batches at once"
    )

    def clean_preferred_batch_sizes(self) -> list[int]:
        raw = self.cleaned_data["preferred_batch_sizes"]
        try:
            return [int(x) for x in raw.split(",") if x.strip()]
        except ValueError:
            raise forms.ValidationError("use whole numbers separated by commas") from None

    def batching(self) -> dict[str, Any]:
        keys = (
            "max_batch_size",
            "max_queue_delay_ms",
            "preferred_batch_sizes",
            "max_queue_size",
            "request_timeout_ms",
            "instances",
        )
        return {k: self.cleaned_data[k] for k in keys}


class DeploymentCreateForm(BatchingFields):
    name = forms.SlugField(max_length=64, help_text="the endpoint name: /v2/models/<name>/infer")
    version = forms.IntegerField(min_value=1, required=False, help_text="pin a version…")
    alias = forms.SlugField(
        max_length=64, required=False, help_text="…or follow an alias (rolls when it moves)"
    )
    replicas = forms.IntegerField(min_value=1, max_value=64, initial=1)
    device = forms.CharField(initial="cpu", max_length=64, help_text="cpu, or cuda:0 / GPU ids 0,1")
    backend = forms.ChoiceField(choices=[(name, name) for name in BACKEND_NAMES])
    constraints = forms.CharField(
        required=False,
        max_length=2000,
        help_text="swarm: one per line, e.g. node.labels.kiln.gpu==true",
        widget=forms.Textarea(attrs={"rows": 2}),
    )
    spread = forms.CharField(
        required=False, max_length=500, help_text="swarm: spread over node labels, e.g. node.labels.zone"
    )
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}), max_length=5000)
    field_order = (
        "name",
        "version",
        "alias",
        "replicas",
        "device",
        "backend",
        "constraints",
        "spread",
        "max_batch_size",
        "max_queue_delay_ms",
        "preferred_batch_sizes",
        "max_queue_size",
        "request_timeout_ms",
        "instances",
        "description",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["backend"].initial = settings.KILN_DEFAULT_BACKEND

    def variant(self) -> dict[str, Any]:
        data = self.cleaned_data
        device = data["device"].strip()
        return {
            "name": "primary",
            "version": data.get("version") if not data.get("alias") else None,
            "alias": data.get("alias") or "",
            "replicas": data["replicas"],
            "weight": 100,
            "device": "cpu" if device in ("", "cpu") else device,
            "backend": data["backend"],
            "batching": self.batching(),
            **self.placement(),
        }

    def placement(self) -> dict[str, Any]:
        """The swarm placement typed in, as the service takes it (nothing when both boxes are empty)."""
        constraints = [line.strip() for line in self.cleaned_data["constraints"].splitlines() if line.strip()]
        spread = [
            part.strip() for part in self.cleaned_data["spread"].replace(",", " ").split() if part.strip()
        ]
        if not constraints and not spread:
            return {}
        return {"placement": {"constraints": constraints, "spread": spread}}


class ScaleForm(forms.Form):
    replicas = forms.IntegerField(min_value=0, max_value=64)


class VersionForm(forms.Form):
    version = forms.IntegerField(min_value=1, required=False)
    alias = forms.SlugField(max_length=64, required=False)


class AddVariantForm(forms.Form):
    name = forms.SlugField(max_length=64, initial="candidate")
    version = forms.IntegerField(min_value=1, required=False)
    alias = forms.SlugField(max_length=64, required=False)
    replicas = forms.IntegerField(min_value=1, max_value=64, initial=1)
    device = forms.CharField(initial="cpu", max_length=64)


class RolloutForm(forms.Form):
    """The web form of a rollout: percentages where the API takes fractions; defaults from the policy."""

    candidate = forms.SlugField(max_length=64)
    steps = forms.CharField(initial=",".join(map(str, RolloutPolicy.default("steps"))))
    hold_s = forms.FloatField(initial=RolloutPolicy.default("hold_s"))
    max_error_rate_percent = forms.FloatField(initial=100 * RolloutPolicy.default("max_error_rate"))
    max_p99_ms = forms.FloatField(initial=RolloutPolicy.default("max_p99_ms"))
    min_shadow_agreement = forms.FloatField(required=False, help_text="percent")

    def clean_steps(self) -> tuple[int, ...]:
        try:
            return tuple(int(s) for s in self.cleaned_data["steps"].split(",") if s.strip())
        except ValueError:
            raise forms.ValidationError("whole percentages separated by commas, e.g. 5,25,50,100") from None

    def policy(self) -> RolloutPolicy:
        data = self.cleaned_data
        agreement = data.get("min_shadow_agreement")
        return RolloutPolicy(
            candidate=data["candidate"],
            steps=data["steps"],
            hold_s=data["hold_s"],
            max_error_rate=data["max_error_rate_percent"] / 100,
            max_p99_ms=data["max_p99_ms"],
            min_shadow_agreement=None if agreement is None else agreement / 100,
        )
