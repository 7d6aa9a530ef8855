"""manage.py usage report [--start D] [--end D] [--days N] [--user U] [--provider P] [--model M] [--top N]
                          [--csv|--json]
manage.py usage prices list [--history] [--json]
manage.py usage prices set PROVIDER MODEL --input X --output Y [--cached-input Z] [--cache-write W] [--effective-from D]
manage.py usage prices load FILE.json
manage.py usage prices sync [--dry-run] [--json]
manage.py usage budget list [--json]
manage.py usage budget set (--user NAME | --group NAME) --monthly-usd AMOUNT [--soft-percent 80]
manage.py usage budget clear (--user NAME | --group NAME)

A price set, loaded or synced, and a budget set or cleared, is written to the audit trail with the OS user who ran
the command.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from django.core.management.base import CommandError
from django.utils import timezone

from aipb.commands import OperatorCommand, parse_day
from aipb.exceptions import ServiceError
from audit.records import Actor
from usage import budgets, price_sync, pricing, reports, selectors, services

MAX_PRICE_FILE_BYTES = 5 * 1024 * 1024


class Command(OperatorCommand):
    help = "Token usage and cost: reports and model prices (USD per million tokens)."

    def add_subcommands(self, nouns):

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

        prices = self.subcommands(nouns.add_parser("prices", help="model prices"), dest="prices_action")
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

        syncing = prices.add_parser("sync", help="add the genai-prices data's prices that changed (operators' win)")
        syncing.add_argument("--dry-run", action="store_true", help="show what would be added; add nothing")
        syncing.add_argument("--json", action="store_true")

        budget = self.subcommands(
            nouns.add_parser("budget", help="monthly spend limits in USD per user and per group"), dest="budget_action"
        )
        listing = budget.add_parser("list", help="every limit with this month's spend, and the default")
        listing.add_argument("--json", action="store_true")
        setting = budget.add_parser("set", help="set or change the monthly limit of a user or a group")
        _holder(setting)
        setting.add_argument("--monthly-usd", required=True, metavar="AMOUNT", help="USD per UTC month; 0 stops all")
        setting.add_argument(
            "--soft-percent", metavar="N", help="nearly-exhausted threshold, 1-100 (default: kept, else 80)"
        )
        clearing = budget.add_parser("clear", help="remove the limit of a user (the default applies) or a group")
        _holder(clearing)

    # --- report ---

    def _report(self, **options) -> None:
        if options["days"] is not None:
            if options["start"] or options["end"]:
                raise CommandError("--days cannot be combined with --start/--end")
            start, end = reports.range_last_n_days(days=options["days"])
        else:
            start, end = reports.range_between(
                start=parse_day(options["start"], option="--start") if options["start"] else None,
                end=parse_day(options["end"], option="--end") if options["end"] else None,
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
            self.print_json(body)
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
            self.print_table(("top user", "requests", "tokens", "cost USD"), rows, right=range(1, 4), rule=True)

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
        self.print_table(
            (title, "requests", "prompt", "cached", "completion", "total", "cost USD", "unpriced"),
            rows,
            right=range(1, 8),
            rule=True,
        )

    # --- prices ---

    def _prices_list(self, **options) -> None:
        now = timezone.now()
        prices = list(selectors.price_list(history=options["history"], at=now))
        if options["json"]:
            self.print_json([selectors.price_as_dict(price) for price in prices])
            return
        in_force = {price.id for price in selectors.price_list(at=now) if price.effective_from <= now}
        rows = [
            (
                price.provider,
                price.model,
                *(_usd(getattr(price, name)) + ("+" if name in price.tiers else "") for name in pricing.PRICE_FIELDS),
                price.effective_from.strftime("%Y-%m-%d %H:%M:%S"),
                "in force" if price.id in in_force else ("scheduled" if price.effective_from > now else "superseded"),
            )
            for price in prices
        ]
        self.stdout.write(_price_data_line(pricing.price_data_info()))
        self.stdout.write("USD per million tokens; '-' = the input price applies; + = tiered by prompt size")
        self.print_table(
            ("provider", "model", "input", "output", "cached in", "cache write", "effective from (UTC)", ""),
            rows,
            right=(2, 3, 4, 5),
            rule=True,
        )
        unpriced = selectors.unpriced_models(at=now)
        if unpriced:
            names = ", ".join(f"{provider}/{model}" for provider, model in unpriced)
            self.stdout.write(self.style.WARNING(f"unpriced (usage counted as unpriced, never as zero): {names}"))

    def _prices_set(self, **options) -> None:
        effective_from = (
            parse_day(options["effective_from"], option="--effective-from") if options["effective_from"] else None
        )
        price = services.price_set(
            provider=options["provider"],
            model=options["model"],
            input_per_million=options["input"],
            output_per_million=options["output"],
            cached_input_per_million=options["cached_input"],
            cache_write_per_million=options["cache_write"],
            effective_from=effective_from,
            actor=Actor.of_command(),
        )
        self.stdout.write(
            f"price set: {price.provider}/{price.model} input {_usd(price.input_per_million)} output "
            f"{_usd(price.output_per_million)} cached {_usd(price.cached_input_per_million)} cache write "
            f"{_usd(price.cache_write_per_million)} USD per million tokens, from {price.effective_from.isoformat()}"
        )

    def _prices_load(self, **options) -> None:
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
            result = services.prices_load(data=data, actor=Actor.of_command())
        except ServiceError as exc:
            raise CommandError(f"{path}: {exc.message}; nothing loaded") from None
        self.stdout.write(f"{path}: {len(result.created)} prices added, {result.unchanged} already present")
        for price in result.created:
            self.stdout.write(f"  {price.provider}/{price.model} from {price.effective_from.isoformat()}")

    def _prices_sync(self, **options) -> None:
        result = price_sync.prices_sync(dry_run=options["dry_run"], actor=Actor.of_command())
        info = pricing.price_data_info()
        if options["json"]:
            self.print_json(
                {
                    "price_data": info,
                    "dry_run": result.dry_run,
                    "added": [
                        {
                            "provider": change.provider,
                            "model": change.model,
                            "effective_from": change.effective_from.isoformat(),
                            **change.terms.as_dict(),
                            "previous": change.previous.as_dict() if change.previous else None,
                        }
                        for change in result.added
                    ],
                    "unchanged": result.unchanged,
                    "operator_priced": [f"{provider}/{model}" for provider, model in result.operator_priced],
                    "unpriced": [{"provider": p, "model": m, "reason": why} for p, m, why in result.unpriced],
                }
            )
            return
        self.stdout.write(_price_data_line(info))
        verb = "would add" if result.dry_run else "added"
        self.stdout.write(f"{verb} {len(result.added)} prices; {result.unchanged} models unchanged")
        for change in result.added:
            was = f" (was {_terms(change.previous)})" if change.previous else " (new)"
            self.stdout.write(
                f"  {change.provider}/{change.model} from {change.effective_from.isoformat()}: "
                f"{_terms(change.terms)}{was}"
            )
        if result.operator_priced:
            names = ", ".join(f"{provider}/{model}" for provider, model in result.operator_priced)
            self.stdout.write(f"kept (an operator's price wins): {names}")
        for provider, model, why in result.unpriced:
            self.stdout.write(self.style.WARNING(f"unpriced: {provider}/{model}: {why}"))

    # --- budgets ---

    def _budget_list(self, **options) -> None:
        rows = budgets.budget_list()
        if options["json"]:
            self.print_json({"limits": rows})
            return
        if not rows:
            self.stdout.write("no limits: spend is unlimited (set one with `usage budget set`)")
            return
        table = [
            (
                row["scope"],
                row["name"] or "(everyone without a limit)",
                row["limit_usd"],
                "-" if row["spent_usd"] is None else row["spent_usd"],
                "-" if row["remaining_usd"] is None else row["remaining_usd"],
                f"{row['soft_percent']}%",
                _state(row),
            )
            for row in rows
        ]
        self.stdout.write(f"USD this UTC month; spend resets at {rows[0]['resets_at']}")
        self.print_table(
            ("scope", "name", "limit", "spent", "remaining", "soft", "state"), table, right=(2, 3, 4, 5), rule=True
        )

    def _budget_set(self, **options) -> None:
        budget = budgets.budget_set(
            user=options["user"],
            group=options["group"],
            monthly_usd=options["monthly_usd"],
            soft_percent=options["soft_percent"],
            actor=Actor.of_command(),
        )
        who = f"user {budget.user.get_username()}" if budget.user_id else f"group {budget.group.name}"
        self.stdout.write(
            f"budget set: {who} {budgets.usd(budget.monthly_usd)} USD per month, "
            f"nearly exhausted at {budget.soft_percent}%"
        )

    def _budget_clear(self, **options) -> None:
        budget = budgets.budget_clear(user=options["user"], group=options["group"], actor=Actor.of_command())
        who = f"user {budget.user.get_username()}" if budget.user_id else f"group {budget.group.name}"
        self.stdout.write(f"budget cleared: {who} (was {budgets.usd(budget.monthly_usd)} USD per month)")


def _holder(parser) -> None:
    whose = parser.add_mutually_exclusive_group(required=True)
    whose.add_argument("--user", metavar="NAME", help="a username")
    whose.add_argument("--group", metavar="NAME", help="a group (team) name")


def _state(row: dict) -> str:
    if row["spent_usd"] is None:
        return ""
    spent, limit = Decimal(row["spent_usd"]), Decimal(row["limit_usd"])
    if spent >= limit:
        return "exhausted"
    return "nearly exhausted" if spent * 100 >= limit * row["soft_percent"] else "ok"


def _price_data_line(info: dict) -> str:
    synced = info["last_synced_at"] or "never"
    return (
        f"price data: {info['package']} {info['version']} ({info['source']}, newest price change "
        f"{info['newest_price_change']}); last synced row {synced}"
    )


def _terms(terms: pricing.PriceTerms) -> str:
    labels = zip(pricing.PRICE_FIELDS, ("input", "output", "cached", "cache write"), strict=True)
    parts = []
    for name, label in labels:
        if getattr(terms, name) is not None:
            tiers = "; ".join(f"{start:,} tokens+: {rate}" for start, rate in terms.tiers.get(name, ()))
            parts.append(f"{label} {_usd(getattr(terms, name))}" + (f" ({tiers})" if tiers else ""))
    return ", ".join(parts)


def _usd(value) -> str:
    return "-" if value is None else f"{value.normalize():f}"
