from __future__ import annotations

from django import forms

from studies.models import DicomNode, Series
from studies.outbound.models import MIGRATION_ASSOCIATIONS_DEFAULT, MIGRATION_ASSOCIATIONS_MAX, MigrationJob


class SendForm(forms.Form):
    node = forms.ModelChoiceField(queryset=DicomNode.objects.none(), label="Send to",
                                  to_field_name="uuid", empty_label=None)
    series = forms.ModelChoiceField(queryset=Series.objects.none(), label="Series", to_field_name="uuid",
                                    required=False, empty_label="The whole study")

    def __init__(self, *args: object, nodes: object, series: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["node"].queryset = nodes
        self.fields["series"].queryset = series


class MigrationForm(forms.Form):
    node = forms.ModelChoiceField(queryset=DicomNode.objects.none(), label="Old archive (DICOM node)",
                                  to_field_name="uuid", required=False,
                                  empty_label="None: a DICOMweb source (below)")
    method = forms.ChoiceField(choices=[(m.value, m.label) for m in (MigrationJob.Method.GET, MigrationJob.Method.MOVE)],
                               initial=MigrationJob.Method.GET, label="Retrieve by (DICOM node)")
    dicomweb_url = forms.CharField(max_length=500, required=False, label="Or a DICOMweb source: base URL",
                                   help_text="e.g. https://pacs.example.org/dicom-web (QIDO-RS and WADO-RS).")
    # Secrets are never sent back to the browser (render_value=False), and are stored sealed.
    dicomweb_token = forms.CharField(max_length=4000, required=False, label="Bearer token",
                                     widget=forms.PasswordInput(render_value=False))
    dicomweb_username = forms.CharField(max_length=200, required=False, label="Or user name")
    dicomweb_password = forms.CharField(max_length=1000, required=False, label="and password", strip=False,
                                        widget=forms.PasswordInput(render_value=False))
    study_date_from = forms.CharField(max_length=8, required=False, label="Studies from (YYYYMMDD)")
    study_date_to = forms.CharField(max_length=8, required=False, label="Studies to (YYYYMMDD)")
    modalities = forms.CharField(max_length=200, required=False, label="Modalities",
                                 help_text="Separated by commas, e.g. CT, MR. Empty: all.")
    patient_ids = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                                  label="Patient IDs", help_text="One per line. Empty: every patient.")
    max_instances_per_second = forms.IntegerField(min_value=0, max_value=100000, initial=0, required=False,
                                                  label="At most images per second (0: no limit)")
    associations = forms.IntegerField(min_value=1, max_value=MIGRATION_ASSOCIATIONS_MAX,
                                      initial=MIGRATION_ASSOCIATIONS_DEFAULT, required=False,
                                      label="Studies retrieved at once",
                                      help_text="Each over an association of its own; the images per second "
                                                "limit holds for all of them together.")
    window_start_hour = forms.IntegerField(min_value=0, max_value=23, initial=0, required=False,
                                           label="Run from hour")
    window_end_hour = forms.IntegerField(min_value=0, max_value=23, initial=0, required=False,
                                         label="Run until hour", help_text="Equal hours: any time.")

    def __init__(self, *args: object, nodes: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["node"].queryset = nodes

    def source(self) -> dict[str, object]:
        """The source the form names: a node, or a DICOMweb URL with its credentials."""
        data = self.cleaned_data
        if data["node"] is not None:
            return {"node": data["node"], "method": data["method"]}
        return {"node": None, "dicomweb_url": data["dicomweb_url"], "dicomweb_token": data["dicomweb_token"],
                "dicomweb_username": data["dicomweb_username"], "dicomweb_password": data["dicomweb_password"]}

    def scope(self) -> dict[str, object]:
        data = self.cleaned_data
        return {
            "study_date_from": data["study_date_from"], "study_date_to": data["study_date_to"],
            "modalities": [m for m in data["modalities"].replace(";", ",").split(",") if m.strip()],
            "patient_ids": [p for p in data["patient_ids"].splitlines() if p.strip()],
            "max_instances_per_second": data["max_instances_per_second"] or 0,
            "associations": data["associations"] or MIGRATION_ASSOCIATIONS_DEFAULT,
            "window_start_hour": data["window_start_hour"] or 0,
            "window_end_hour": data["window_end_hour"] or 0,
        }


class RoutingRuleForm(forms.Form):
    name = forms.CharField(max_length=100)
    destinations = forms.ModelMultipleChoiceField(queryset=DicomNode.objects.none(), to_field_name="uuid",
                                                  widget=forms.CheckboxSelectMultiple)
    calling_ae_title = forms.CharField(max_length=16, required=False, label="Only from calling AE title")
    modality = forms.CharField(max_length=16, required=False, label="Only modality")
    source = forms.ChoiceField(required=False, label="Only arriving by", choices=[
        ("", "any way"), ("dimse", "DICOM (C-STORE)"), ("dicomweb", "DICOMweb (STOW-RS)"), ("upload", "browser upload"),
        ("migration", "migration"),
    ])

    def __init__(self, *args: object, nodes: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["destinations"].queryset = nodes
