"""Web UI forms. They only validate shape; services decide everything else."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.utils.text import slugify

from config import json_input
from config.errors import PlatformError
from inference_worker.contracts.labels import MAX_LABELS_BYTES, labels_from_text
from registry.models import SLUG_RULE, slug_refusal
from registry.services import PARITY_TOLERANCE_MAX, ParityTolerance
from registry.signature import DTYPES


class ModelCreateForm(forms.Form):
    name = forms.CharField(
        max_length=64, help_text="lowercase letters, digits and hyphens, e.g. fraud-detector"
    )
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False, max_length=10_000)
    tags = forms.CharField(required=False, help_text="comma-separated", max_length=2000)

    def clean_name(self) -> str:
        """The name as the service will take it; a refusal says what would do (``My Model``: my-model)."""
        name: str = self.cleaned_data["name"].strip()
        if slug_refusal("name", name) is not None:
            suggestion = slugify(name)[:64].strip("-")
            hint = f" (for example {suggestion})" if suggestion and suggestion != name else ""
            raise forms.ValidationError(f"“{name}” is not a valid name: {SLUG_RULE}{hint}.")
        return name

    def clean_tags(self) -> list[str]:
        return [t.strip() for t in self.cleaned_data["tags"].split(",") if t.strip()]


def _class_labels_field() -> forms.CharField:
    return forms.CharField(
        required=False,
        label="Class labels",
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "class": "mono"}),
        max_length=4 * MAX_LABELS_BYTES,
        help_text=(
            "Optional: the class names of the model's first numeric output, one per line in class order "
            '(or JSON by output name: {"logits": ["cat", "dog"]}). Top-k answers carry them.'
        ),
    )


class ClassLabelsInput(forms.Form):
    """The labels as typed: JSON, or one per line (``contracts.labels.labels_from_text``)."""

    def clean_class_labels(self) -> object:
        return labels_from_text(self.cleaned_data["class_labels"])


class LabelsForm(ClassLabelsInput):
    class_labels = _class_labels_field()

    @staticmethod
    def text_of(labels: dict[str, list[str]], first_output: str) -> str:
        """What the field shows for a version's labels: lines for the first output's alone, else JSON."""
        if not labels:
            return ""
        if list(labels) == [first_output]:
            return "\n".join(labels[first_output])
        return json.dumps(labels, ensure_ascii=False, indent=1)


def _tolerance_field(what: str) -> forms.FloatField:
    return forms.FloatField(
        required=False,
        min_value=0.0,
        max_value=PARITY_TOLERANCE_MAX,
        label=f"Parity {what}",
        widget=forms.NumberInput(attrs={"step": "any", "placeholder": "the platform's"}),
        help_text=f"Optional: this version's {what} for the parity check "
        "(|onnx - reference| <= atol + rtol * |reference|); empty: the platform's.",
    )


class ToleranceForm(forms.Form):
    """The parity tolerance a conversion again is asked for (empty fields keep the version's)."""

    parity_atol = _tolerance_field("atol")
    parity_rtol = _tolerance_field("rtol")

    def tolerance(self) -> ParityTolerance:
        return ParityTolerance.of(self.cleaned_data)


class UploadForm(ClassLabelsInput):
    file = forms.FileField(
        help_text="TorchScript (torch.jit.save), torch.export program (.pt2) or ONNX; pickles are refused"
    )
    external_data = forms.FileField(
        required=False,
        label="ONNX external data",
        help_text="the weights file torch.onnx.export writes beside the model (model.onnx.data), if any",
    )
    signature = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false", "class": "mono"}),
        max_length=64 * 1024,
        help_text=(
            "Required for TorchScript: "
            '{"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3, 32, 32]}]}. '
            f"dtypes: {', '.join(DTYPES)}; -1 marks a dynamic dimension."
        ),
    )
    class_labels = _class_labels_field()
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False, max_length=10_000)
    git_commit = forms.CharField(required=False, max_length=100, label="Git commit")
    ci_run_url = forms.URLField(required=False, max_length=500, label="CI run URL", assume_scheme="https")
    parity_atol = _tolerance_field("atol")
    parity_rtol = _tolerance_field("rtol")

    def tolerance(self) -> ParityTolerance:
        return ParityTolerance.of(self.cleaned_data)

    def clean_signature(self) -> Any:
        raw = self.cleaned_data["signature"].strip()
        if not raw:
            return None
        try:
            return json_input.loads(raw, "signature")
        except PlatformError as exc:
            raise forms.ValidationError(exc.message) from None

    def metadata(self) -> dict[str, str]:
        data = {"source": "web"}
        if self.cleaned_data.get("git_commit"):
            data["git_commit"] = self.cleaned_data["git_commit"]
        if self.cleaned_data.get("ci_run_url"):
            data["ci_run_url"] = self.cleaned_data["ci_run_url"]
        return data


class AliasForm(forms.Form):
    alias = forms.SlugField(max_length=64, initial="production")
    version = forms.IntegerField(min_value=1)
