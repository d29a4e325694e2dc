from __future__ import annotations

from django import forms

from billing.models import Plan


class PlanChangeForm(forms.Form):
    plan = forms.ModelChoiceField(queryset=Plan.objects.filter(is_active=True), to_field_name="code",
                                  error_messages={"invalid_choice": "Choose one of the plans listed."})
    when_usage_fits = forms.BooleanField(required=False)
