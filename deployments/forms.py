"""Web forms for deployments. They validate shape; services decide the rest."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from deployments.autoscaling.table import AUTOSCALING
from deployments.backends import BACKEND_NAMES
from deployments.inputs import (
    AutoscalingPolicy,
    Placement,
    RolloutPolicy,
    VariantSpec,
    VersionTarget,
    gpu_ids,
)
from inference_worker.contracts.batching import BATCHING
from inference_worker.contracts.options import Kind, OptionField, whole


def batching_field(option: OptionField[Any]) -> forms.Field:
    """The form field of one option (batching, autoscaling): bounds, label and help from its table."""
    label, help_text = option.title, option.help
    if option.kind is Kind.INT:
        low, high = whole(option.low), whole(option.high)
        return forms.IntegerField(min_value=low, max_value=high, label=label, help_text=help_text)
    if option.kind is Kind.FLOAT:
        return forms.FloatField(min_value=option.low, max_value=option.high, label=label, help_text=help_text)
    # the preferred sizes, typed as on the worker's command line: 8,16
    return forms.CharField(required=False, label=label, help_text=help_text)


class BatchingFields(forms.Form):
    """One field per batching option, made from the option table with the form (so it follows the table)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for option in BATCHING.values():
            self.fields[option.name] = batching_field(option)
        self.order_fields(self.field_order)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for option in BATCHING.values():
            if option.kind is Kind.SIZES and isinstance(cleaned.get(option.name), str):
                try:
                    cleaned[option.name] = list(option.from_text(cleaned[option.name]))
                except ValueError:
                    self.add_error(option.name, "use whole numbers separated by commas")
        return cleaned

    def batching(self) -> dict[str, Any]:
        """The options as the services take them (the API's ``batching`` object)."""
        return {name: self.cleaned_data[name] for name in BATCHING}


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
        *BATCHING,
        "description",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["backend"].initial = settings.KILN_DEFAULT_BACKEND

    def variant(self) -> VariantSpec:
        data = self.cleaned_data
        return VariantSpec(
            target=VersionTarget(
                version=None if data.get("alias") else data.get("version"), alias=data.get("alias") or ""
            ),
            name="primary",
            replicas=data["replicas"],
            weight=100,
            gpu_ids=gpu_ids(data["device"].strip()),
            backend=data["backend"],
            batching=self.batching(),
            placement=self.placement(),
        )

    def placement(self) -> Placement:
        """The swarm placement typed in: constraints one per line, labels to spread over."""
        constraints = [line.strip() for line in self.cleaned_data["constraints"].splitlines() if line.strip()]
        spread = [part for part in self.cleaned_data["spread"].replace(",", " ").split() if part]
        return Placement.parse({"constraints": constraints, "spread": spread})


class AutoscalingForm(forms.Form):
    """A variant's autoscaling policy: one field per option of the table, its current value shown."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for option in AUTOSCALING.values():
            self.fields[option.name] = batching_field(option)
            self.fields[option.name].initial = self.initial.get(option.name, option.default)

    def policy(self) -> AutoscalingPolicy:
        return AutoscalingPolicy(**{name: self.cleaned_data[name] for name in AUTOSCALING})


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
