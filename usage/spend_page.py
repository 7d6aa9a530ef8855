"""The spend page's form and charts (usage.admin's spend view): a range of days, the bars by provider and by
day, drawn server-side as SVG (no script)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django import forms

from jobs import catalogue
from usage import reports


class SpendForm(forms.Form):
    """The spend page's range and filters; usage.reports checks them (range length, provider, user) once more."""

    start = forms.DateField(required=False, help_text="first UTC day; default the 1st of the end's month")
    end = forms.DateField(required=False, help_text="last UTC day, included; default today")
    provider = forms.ChoiceField(required=False, choices=[("", "every provider")])
    model = forms.CharField(required=False, max_length=200)
    user = forms.CharField(required=False, max_length=150, help_text="a username")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["provider"].choices = [("", "every provider"), *((p, p) for p in catalogue.PROVIDER_IDS)]
        for field in self.fields.values():
            if isinstance(field, forms.DateField):
                field.widget = forms.DateInput(attrs={"type": "date"})


def every_day(by_date: dict, filters: reports.ReportFilters) -> dict:
    """Every day of the range, days without usage at zero, so the bars keep the calendar's spacing."""
    zero = {key: 0 for key in reports.TOTAL_KEYS} | {"estimated_cost": reports.money(None)}
    days, day = {}, filters.start
    while day <= filters.end:
        days[day.isoformat()] = by_date.get(day.isoformat()) or dict(zero)
        day += timedelta(days=1)
    return days


def provider_bars(by_provider: dict) -> list[dict]:
    top = max((Decimal(t["estimated_cost"]) for t in by_provider.values()), default=Decimal(0))
    return [
        {
            "name": name,
            "totals": totals,
            "percent": _percent(Decimal(totals["estimated_cost"]), top),
        }
        for name, totals in sorted(by_provider.items(), key=lambda item: -Decimal(item[1]["estimated_cost"]))
    ]


CHART_HEIGHT = 160
BAR_PITCH = 22


def day_chart(by_date: dict) -> dict:
    top = max((Decimal(t["estimated_cost"]) for t in by_date.values()), default=Decimal(0))
    bars = []
    for index, (day, totals) in enumerate(by_date.items()):
        height = int(_percent(Decimal(totals["estimated_cost"]), top) * CHART_HEIGHT / 100)
        bars.append(
            {
                "day": day,
                "label": day[8:],
                "totals": totals,
                "x": index * BAR_PITCH + 2,
                "label_x": index * BAR_PITCH + BAR_PITCH // 2,
                "y": CHART_HEIGHT - height,
                "height": height,
            }
        )
    return {
        "bars": bars,
        "width": max(len(bars), 1) * BAR_PITCH,
        "height": CHART_HEIGHT,
        "label_y": CHART_HEIGHT + 14,
        "max_cost": reports.money(top),
        "bar_width": BAR_PITCH - 4,
    }


def _percent(value: Decimal, top: Decimal) -> float:
    return 0.0 if top <= 0 else round(float(value / top * 100), 1)
