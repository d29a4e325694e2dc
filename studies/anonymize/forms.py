from __future__ import annotations

import json

from django import forms

from studies.anonymize.profile import Option
from studies.models import DicomNode
from tenants.models import ApiToken

OPTION_LABELS = {
    Option.RETAIN_LONG_FULL_DATES: "Retain longitudinal information: full dates",
    Option.RETAIN_LONG_MODIFIED_DATES: "Retain longitudinal information: dates shifted per patient",
    Option.RETAIN_PATIENT_CHARACTERISTICS: "Retain patient characteristics (sex, age, size, weight)",
    Option.RETAIN_DEVICE_IDENTITY: "Retain device identity",
    Option.RETAIN_INSTITUTION_IDENTITY: "Retain institution identity",
    Option.RETAIN_UIDS: "Retain UIDs",
    Option.RETAIN_SAFE_PRIVATE: "Retain safe private attributes",
    Option.CLEAN_DESCRIPTORS: "Clean descriptors (keep free text, scrub the patient's names and IDs)",
}


class AnonymizeForm(forms.Form):
    project = forms.CharField(max_length=100, help_text="An existing project, or a new name to start one.")
    options = forms.MultipleChoiceField(
        choices=[(option.value, label) for option, label in OPTION_LABELS.items()],
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )
    series = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple,
                                       help_text="Leave empty for the whole study.")

    def __init__(self, *args, series_choices: list[tuple[str, str]] | None = None, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.fields["series"].choices = series_choices or []


class ProjectForm(forms.Form):
    name = forms.CharField(max_length=100)
    pseudonym_prefix = forms.CharField(max_length=20, initial="RESEARCH")
    options = forms.MultipleChoiceField(
        choices=[(option.value, label) for option, label in OPTION_LABELS.items()],
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )


class DeviceRectanglesForm(forms.Form):
    device_rectangles = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}),
        required=False,
        help_text='JSON: [{"manufacturer": "ACME", "model": "US-1", "rectangles": [[0, 0, 640, 40]]}]',
    )

    def clean_device_rectangles(self) -> list[dict]:
        text = self.cleaned_data["device_rectangles"].strip() or "[]"
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"This is not valid JSON: {exc.msg} (line {exc.lineno}).") from exc
        if not isinstance(value, list) or not all(
            isinstance(d, dict) and d.get("manufacturer") and isinstance(d.get("rectangles"), list)
            and all(isinstance(r, list) and len(r) == 4 and all(isinstance(n, int) and n >= 0 for n in r)
                    for r in d["rectangles"])
            for d in value
        ):
            raise forms.ValidationError(
                "Give a list of devices, each with a manufacturer and rectangles of four whole numbers [x, y, width, height]."
            )
        return value


class ReidentifyForm(forms.Form):
    pseudonym = forms.CharField(max_length=64, required=False)
    uid = forms.CharField(max_length=64, required=False, label="Replacement UID")


class IngestRulesForm(forms.Form):
    """Which arrivals this project anonymizes before anything is stored."""

    clinic_wide = forms.BooleanField(required=False, label="Everything arriving in this clinic")
    api_tokens = forms.ModelMultipleChoiceField(queryset=None, required=False, to_field_name="uuid",
                                                widget=forms.CheckboxSelectMultiple, label="Through these API tokens")
    dicom_nodes = forms.ModelMultipleChoiceField(queryset=None, required=False, to_field_name="uuid",
                                                 widget=forms.CheckboxSelectMultiple, label="From these DICOM nodes")

    def __init__(self, *args, clinic, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.fields["api_tokens"].queryset = ApiToken.objects.for_clinic(clinic).filter(revoked_at__isnull=True)
        self.fields["api_tokens"].label_from_instance = lambda token: f"{token.name} ({token.role})"
        self.fields["dicom_nodes"].queryset = DicomNode.objects.for_clinic(clinic)
        self.fields["dicom_nodes"].label_from_instance = lambda node: f"{node.ae_title} ({node.host})"
