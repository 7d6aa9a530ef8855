"""manage.py usage report [--start D] [--end D] [--days N] [--user U] [--provider P] [--model M] [--top N]
                          [--csv|--json]
manage.py usage prices list [--history] [--json]
manage.py usage prices set PROVIDER MODEL --input X --output Y [--cached-input Z] [--cache-write W] [--effective-from D]
manage.py usage prices load FILE.json
"""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from aipb.exceptions import ServiceError
from usage import reports, selectors, services

MAX_PRICE_FILE_BYTES = 5 * 1024 * 1024


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"not a date (YYYY-MM-DD): {value!r}") from None


class Command(BaseCommand):
    help = "Token usage and cost: reports and model prices (USD per million tokens)."

    def add_arguments(self, parser):
        nouns = parser.add_subparsers(dest="noun", required=True, metavar="{report,prices}")

        report = nouns.add_parser("report", help="usage and cost for a UTC date range (inclusive)")
        report.add_argument("--start", metavar="YYYY-MM-DD", help="default: the 1st of the end date's month")
        report.add_argument("--end", metavar="YYYY-MM-DD", help="default: today (UTC)")
        report.add_argument("--days", type=int, metavar="N", help="today and the N-1 days before (instead of dates)")
        report.add_argument("--user", metavar="USERNAME")
        report.add_argument("--provider")
        report.add_argument("--model")
        report.add_argument("--top", type=int, default=reports.DEFAULT_TOP, metavar="N", help="top users shown")
        output = report.add_mutually_exclusive_group()
        output.add_argument("--csv", action="store_true", help="one line per date, provider, model and user")
        output.add_argument("--json", action="store_true", help="the API's report body")

        prices = nouns.add_parser("prices", help="model prices").add_subparsers(
            dest="action", required=True, metavar="{list,set,load}"
        )
        listing = prices.add_parser("list", help="prices in force and scheduled; --history for every row")
        listing.add_argument("--history", action="store_true")
        listing.add_argument("--json", action="store_true", help="the shape `prices load` reads")

        setting = prices.add_parser("set", help="add a price (a new row; history is kept)")
        setting.add_argument("provider")
        setting.add_argument("model")
        setting.add_argument("--input", required=True, metavar="USD", help="per million input tokens")
        setting.add_argument("--output", required=True, metavar="USD", help="per million output tokens")
        setting.add_argument("--cached-input", metavar="USD", help="per million cached input tokens")
        setting.add_argument("--cache-write", metavar="USD", help="per million cache-write tokens")
        setting.add_argument("--effective-from", metavar="YYYY-MM-DD", help="midnight UTC of that day; default now")

        loading = prices.add_parser("load", help="add the prices in a JSON file (all or nothing)")
        loading.add_argument("file", metavar="FILE.json")

    def handle(self, *args, **options):
        try:
            if options["noun"] == "report":
                self._report(options)
            else:
                getattr(self, f"_prices_{options['action']}")(options)
        except ServiceError as exc:
            raise CommandError(exc.message) from None

    # --- report ---

    def _report(self, options) -> None:
        if options["days"] is not None:
            if options["start"] or options["end"]:
                raise CommandError("--days cannot be combined with --start/--end")
            start, end = reports.range_last_n_days(days=options["days"])
        else:
            start, end = reports.range_between(
                start=_date(options["start"]) if options["start"] else None,
                end=_date(options["end"]) if options["end"] else None,
            )
        if not 1 <= options["top"] <= reports.MAX_TOP:
            raise CommandError(f"--top must be from 1 to {reports.MAX_TOP}")
        filters = reports.report_filters(
            start=start, end=end, provider=options["provider"], model=options["model"], username=options["user"]
        )
        if options["csv"]:
            for line in reports.csv_stream(filters=filters):
                self.stdout.write(line, ending="")
            return
        body = reports.usage_report(filters=filters, top=options["top"])
        if options["json"]:
            self.stdout.write(json.dumps(body, indent=2))
            return
        self._report_tables(body, options)

    def _report_tables(self, body: dict, options) -> None:
        scope = [f"{name}={options[name]}" for name in ("user", "provider", "model") if options[name]]
        self.stdout.write(
            f"Usage {body['start']} .. {body['end']} (UTC, inclusive){'  ' + ' '.join(scope) if scope else ''}"
        )
        self.stdout.write(
            f"requests {body['requests']:,}   tokens {body['total_tokens']:,} "
            f"(prompt {body['prompt_tokens']:,}, cached {body['cached_tokens']:,}, "
            f"completion {body['completion_tokens']:,})   estimated cost ${body['total_estimated_cost']}"
        )
        if body["unpriced_requests"]:
            self.stdout.write(
                self.style.WARNING(f"{body['unpriced_requests']:,} requests are unpriced (not included in the cost)")
            )
        for title, key in (("provider", "by_provider"), ("model", "by_model"), ("date", "by_date")):
            self._totals_table(title, body[key])
        if body["top_users"]:
            self.stdout.write("")
            rows = [
                (u["user"], f"{u['requests']:,}", f"{u['total_tokens']:,}", u["estimated_cost"])
                for u in body["top_users"]
            ]
            self._table(("top user", "requests", "tokens", "cost USD"), rows)

    def _totals_table(self, title: str, groups: dict) -> None:
        if not groups:
            return
        self.stdout.write("")
        rows = [
            (
                name,
                f"{t['requests']:,}",
                f"{t['prompt_tokens']:,}",
                f"{t['cached_tokens']:,}",
                f"{t['completion_tokens']:,}",
                f"{t['total_tokens']:,}",
                t["estimated_cost"],
                f"{t['unpriced_requests']:,}",
            )
            for name, t in groups.items()
        ]
        self._table((title, "requests", "prompt", "cached", "completion", "total", "cost USD", "unpriced"), rows)

    def _table(self, header: tuple, rows: list[tuple], *, text_columns: tuple[int, ...] = (0,)) -> None:
        """A plain-text table; text columns left-aligned, numbers right-aligned."""
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
        for index, row in enumerate([header, *rows]):
            cells = [
                str(cell).ljust(width) if column in text_columns else str(cell).rjust(width)
                for column, (cell, width) in enumerate(zip(row, widths, strict=True))
            ]
            self.stdout.write("  ".join(cells).rstrip())
            if index == 0:
                self.stdout.write("  ".join("-" * width for width in widths))

    # --- prices ---

    def _prices_list(self, options) -> None:
        now = timezone.now()
        prices = list(selectors.price_list(history=options["history"], at=now))
        if options["json"]:
            self.stdout.write(json.dumps([selectors.price_as_dict(price) for price in prices], indent=2))
            return
        in_force = {price.id for price in selectors.price_list(at=now) if price.effective_from <= now}
        rows = [
            (
                price.provider,
                price.model,
                _usd(price.input_per_million),
                _usd(price.output_per_million),
                _usd(price.cached_input_per_million),
                _usd(price.cache_write_per_million),
                price.effective_from.strftime("%Y-%m-%d %H:%M:%S"),
                "in force" if price.id in in_force else ("scheduled" if price.effective_from > now else "superseded"),
            )
            for price in prices
        ]
        self.stdout.write("USD per million tokens; '-' = the input price applies")
        self._table(
            ("provider", "model", "input", "output", "cached in", "cache write", "effective from (UTC)", ""),
            rows,
            text_columns=(0, 1, 6, 7),
        )
        unpriced = selectors.unpriced_models(at=now)
        if unpriced:
            names = ", ".join(f"{provider}/{model}" for provider, model in unpriced)
            self.stdout.write(self.style.WARNING(f"unpriced (usage counted as unpriced, never as zero): {names}"))

    def _prices_set(self, options) -> None:
        effective_from = _date(options["effective_from"]) if options["effective_from"] else None
        price = services.price_set(
            provider=options["provider"],
            model=options["model"],
            input_per_million=options["input"],
            output_per_million=options["output"],
            cached_input_per_million=options["cached_input"],
            cache_write_per_million=options["cache_write"],
            effective_from=effective_from,
        )
        self.stdout.write(
            f"price set: {price.provider}/{price.model} input {_usd(price.input_per_million)} output "
            f"{_usd(price.output_per_million)} cached {_usd(price.cached_input_per_million)} cache write "
            f"{_usd(price.cache_write_per_million)} USD per million tokens, from {price.effective_from.isoformat()}"
        )

    def _prices_load(self, options) -> None:
        path = Path(options["file"])
        try:
            if path.stat().st_size > MAX_PRICE_FILE_BYTES:
                raise CommandError(f"{path}: larger than {MAX_PRICE_FILE_BYTES // (1024 * 1024)} MiB")
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"cannot read {path}: {exc.__class__.__name__}: {exc}") from None
        try:
            data = json.loads(text, parse_float=Decimal)
        except ValueError as exc:
            raise CommandError(f"{path} is not valid JSON: {exc}") from None
        try:
            result = services.prices_load(data=data)
        except ServiceError as exc:
            raise CommandError(f"{path}: {exc.message}; nothing loaded") from None
        self.stdout.write(f"{path}: {len(result.created)} prices added, {result.unchanged} already present")
        for price in result.created:
            self.stdout.write(f"  {price.provider}/{price.model} from {price.effective_from.isoformat()}")


def _usd(value) -> str:
    return "-" if value is None else f"{value.normalize():f}"
