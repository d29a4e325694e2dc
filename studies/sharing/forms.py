from __future__ import annotations

from django import forms

from studies.anonymize.models import AnonymizationProject
from studies.sharing.models import ShareKind
from studies.sharing.services import DEFAULT_EXPIRY_DAYS, MAX_EXPIRY_DAYS, MAX_OPENS


class ShareForm(forms.Form):
    kind = forms.ChoiceField(choices=ShareKind.choices, initial=ShareKind.LINK, widget=forms.RadioSelect)
    expires_in_days = forms.IntegerField(min_value=1, max_value=MAX_EXPIRY_DAYS, initial=DEFAULT_EXPIRY_DAYS,
                                         label="Expires after (days)")
    pin = forms.RegexField(regex=r"^\d{4,12}$", required=False, label="PIN (optional for links, required for patients)",
                           error_messages={"invalid": "A PIN is 4 to 12 digits."},
                           widget=forms.TextInput(attrs={"inputmode": "numeric", "autocomplete": "off"}))
    allow_download = forms.BooleanField(required=False, label="Allow download")
    max_opens = forms.IntegerField(min_value=1, max_value=MAX_OPENS, required=False,
                                   label="Maximum number of opens (optional)")
    note = forms.CharField(max_length=500, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    recipient_email = forms.EmailField(max_length=254, required=False, label="E-mail the link to (optional)")

    def clean(self) -> dict:
        data = super().clean()
        if data.get("kind") == ShareKind.PATIENT and not data.get("pin"):
            self.add_error("pin", "A patient access code needs a PIN.")
        return data


class ExtendForm(forms.Form):
    days = forms.IntegerField(min_value=1, max_value=MAX_EXPIRY_DAYS, initial=DEFAULT_EXPIRY_DAYS)


class PinForm(forms.Form):
    pin = forms.CharField(max_length=12, widget=forms.PasswordInput(attrs={"inputmode": "numeric", "autofocus": True}))


class AccessCodeForm(forms.Form):
    code = forms.CharField(max_length=20, label="Access code")


class UploadLinkForm(forms.Form):
    expires_in_days = forms.IntegerField(min_value=1, max_value=MAX_EXPIRY_DAYS, initial=DEFAULT_EXPIRY_DAYS,
                                         label="Expires after (days)")
    pin = forms.RegexField(regex=r"^\d{4,12}$", required=False, label="PIN (optional)",
                           error_messages={"invalid": "A PIN is 4 to 12 digits."})
    note = forms.CharField(max_length=500, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    anonymize_project = forms.ModelChoiceField(queryset=None, required=False, to_field_name="uuid",
                                               label="Anonymize on arrival under project (optional)")

    def __init__(self, *args, clinic, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.fields["anonymize_project"].queryset = AnonymizationProject.objects.for_clinic(clinic).order_by("name")
