"""manage.py providers status|probe|outage — provider health and drills for operators.

providers status [--json]                  each target called or probed lately: circuit, p50, error rate, probe
providers probe [--every SECONDS] [--json] one tiny request to each configured target; records the outcome
providers outage simulated MODEL --seconds N | --clear
                                           take a simulated model down for every worker (a drill), or end it
"""

from __future__ import annotations

import time

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError
from django.db import close_old_connections
from redis.exceptions import RedisError

from aipb.commands import OperatorCommand, one_line, parse_int
from jobs import catalogue
from jobs.providers import simulated
from jobs.routing.health import providers_probe, targets_health


class Command(OperatorCommand):
    help = "Provider health (circuits, latency, probes) and the simulated provider's outage switch."

    def add_subcommands(self, sub):
        p = sub.add_parser("status", help="circuit, recent p50 latency and error rate, last probe of each target")
        p.add_argument("--json", action="store_true", help="print the rows as JSON")

        p = sub.add_parser("probe", help="send one tiny request to each configured target and record how it went")
        p.add_argument("--every", default=None, metavar="SECONDS", help="run forever, every N seconds (1 to 86400)")
        p.add_argument("--json", action="store_true", help="print the results as JSON (one document a line)")

        p = sub.add_parser("outage", help="simulated provider only: fail every call to a model with 503 for a while")
        p.add_argument("provider", help="only 'simulated': a real provider's outages are not ours to make")
        p.add_argument("model", help="a model of the simulated provider (sim-small, sim-large)")
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument("--seconds", default=None, help=f"how long (1 to {simulated.OUTAGE_MAX_SECONDS})")
        group.add_argument("--clear", action="store_true", help="end the outage now")

    def _status(self, *, json, **_):
        rows = targets_health()
        if json:
            self.print_json(rows)
            return
        if not rows:
            self.stdout.write("no target was called or probed in the last day")
            return
        self.print_table(
            ("PROVIDER", "MODEL", "CIRCUIT", "P50 MS", "ERROR RATE", "LAST PROBE", "PROBE OK", "PROBE MS"),
            [
                (
                    r["provider"],
                    r["model"],
                    r["circuit"],
                    r["p50_latency_ms"],
                    "" if r["error_rate"] is None else f"{r['error_rate']:.0%}",
                    r["last_probe_at"] or "",
                    "" if r["last_probe_ok"] is None else ("yes" if r["last_probe_ok"] else "NO"),
                    r["last_probe_latency_ms"],
                )
                for r in rows
            ],
            right=(3, 4, 7),
            styles={2: lambda text: self.style.ERROR(text) if text.strip() != "closed" else text},
        )

    def _probe(self, *, every, json, **_):
        if every is None:
            self._print_probes(self._probed(), as_json=json)
            return
        seconds = parse_int(every, option="--every", minimum=1, maximum=86_400)
        while True:  # the schedule `make run` uses; a deployment may use cron with a plain `providers probe`
            close_old_connections()
            try:
                self._print_probes(self._probed(), as_json=json)
            except (RedisError, CommandError) as exc:
                self.stderr.write(f"providers probe: {exc.__class__.__name__}: {exc}; trying again in {seconds}s")
            time.sleep(seconds)

    def _probed(self) -> list[dict]:
        try:
            return providers_probe()
        except ImproperlyConfigured as exc:  # AI_FALLBACKS names what is wrong
            raise CommandError(one_line(str(exc))) from None

    def _print_probes(self, results: list[dict], *, as_json: bool) -> None:
        if as_json:
            self.print_json(results, one_line=True)
            return
        for r in results:
            state = self.style.SUCCESS("ok") if r["ok"] else self.style.ERROR(f"FAILED {r['error_type']}")
            detail = f": {r['error']}" if not r["ok"] and r["error"] else ""
            self.stdout.write(f"{r['provider']}/{r['model']}: {state} in {r['latency_ms']} ms{detail}")

    def _outage(self, *, provider, model, seconds, clear, **_):
        if provider != "simulated":
            raise CommandError(
                f"the outage switch exists for the simulated provider only, not {provider!r} (a drill must not "
                "pretend a real provider is down)"
            )
        if model not in {m.name for m in catalogue.models("simulated")}:
            names = ", ".join(m.name for m in catalogue.models("simulated"))
            raise CommandError(f"unknown simulated model {model!r}; choose one of {names}")
        if clear:
            ended = simulated.outage_clear(model=model)
            self.stdout.write(f"simulated/{model}: " + ("outage ended" if ended else "no outage was on"))
            return
        duration = parse_int(seconds, option="--seconds", minimum=1, maximum=simulated.OUTAGE_MAX_SECONDS)
        simulated.outage_set(model=model, seconds=duration)
        self.stdout.write(
            self.style.WARNING(f"simulated/{model}: down for {duration}s")
            + f" (every call answers 503; `manage.py providers outage simulated {model} --clear` ends it)"
        )
