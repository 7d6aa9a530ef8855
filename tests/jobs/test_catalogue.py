"""jobs.catalogue and the provider declarations it is derived from (jobs.providers.registry): the models
each provider accepts come from the genai-prices data for openai, anthropic and google and from our own
declarations for local and simulated; names resolve as the data resolves them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from genai_prices import data_snapshot
from genai_prices import types as price_types

from jobs import catalogue
from jobs.providers import registry
from jobs.providers.registry import DeclaredModels, PriceDataModels

TODAY = {"openai": "gpt-5-mini", "anthropic": "claude-sonnet-4-5", "google": "gemini-2.5-flash"}


@pytest.fixture
def no_keys(settings):
    settings.OPENAI_API_KEY = settings.ANTHROPIC_API_KEY = settings.GEMINI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    settings.AI_DEFAULT_PROVIDER = settings.AI_DEFAULT_MODEL = ""
    settings.AI_ENABLE_SIMULATED_PROVIDER = False
    return settings


@pytest.fixture
def price_data() -> Iterator[list[price_types.Provider]]:
    """The bundled data's providers, to change and install as the data in use; the bundled data is put
    back afterwards (the package's own switch, as a fetch with AI_PRICES_AUTO_UPDATE uses it)."""
    yield [p for p in data_snapshot.get_snapshot().providers]
    data_snapshot.set_custom_snapshot(None)


# --------------------------------------------------------------------------- the names accepted


@pytest.mark.parametrize("provider, model", sorted(TODAY.items()))
def test_todays_model_names_are_accepted_with_the_datas_context_limit(provider, model):
    info = catalogue.lookup(provider, model)
    assert (info.provider, info.name, info.api_id) == (provider, model, model)
    assert info.context_tokens == {"gpt-5-mini": 400_000, "claude-sonnet-4-5": 200_000}.get(model, 1_048_576)


@pytest.mark.parametrize(
    "provider, model, canonical, api_id",
    [
        ("openai", "gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini"),
        ("openai", "gpt-4o-2024-08-06", "gpt-4o", "gpt-4o-2024-08-06"),  # a dated id pins that snapshot
        ("openai", "gpt-5-mini-2025-08-07", "gpt-5-mini", "gpt-5-mini-2025-08-07"),
        ("openai", "gpt-4", "gpt-4", "gpt-4"),
        ("anthropic", "claude-3-haiku", "claude-3-haiku", "claude-3-haiku-20240307"),  # the API needs the date
        ("anthropic", "claude-3-haiku-20240307", "claude-3-haiku", "claude-3-haiku-20240307"),
        ("anthropic", "claude-3-5-sonnet", "claude-3-5-sonnet", "claude-3-5-sonnet-20241022"),
        ("anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929"),
        # canonical names the data spells differently from the old hand-written list
        ("anthropic", "claude-sonnet-4", "claude-sonnet-4-0", "claude-sonnet-4-20250514"),
        ("anthropic", "claude-3-opus", "claude-3-opus-latest", "claude-3-opus-20240229"),
        ("google", "gemini-2.0-flash", "gemini-2.0-flash", "gemini-2.0-flash"),
        ("google", "gemini-2.0-flash-001", "gemini-2.0-flash", "gemini-2.0-flash-001"),
        ("google", "gemini-1.5-pro-002", "gemini-1.5-pro", "gemini-1.5-pro-002"),
        ("google", "gemma-4-31b-it", "gemma-4-31b-it", "gemma-4-31b-it"),
        ("local", "local-page", "local-page", "local-page"),
        ("simulated", "sim-small", "sim-small", "sim-small"),
        ("simulated", "sim-large", "sim-large", "sim-large"),
    ],
)
def test_old_names_and_aliases_resolve_to_one_canonical_name(provider, model, canonical, api_id):
    info = catalogue.lookup(provider, model)
    assert (info.name, info.api_id) == (canonical, api_id)
    assert catalogue.canonical_model(provider, model) == canonical


def test_gemini_2_0_flash_is_marked_deprecated_but_still_offered():
    assert catalogue.lookup("google", "gemini-2.0-flash").deprecated is True
    assert catalogue.lookup("google", "gemini-2.5-flash").deprecated is False


@pytest.mark.parametrize(
    "provider, model, reason",
    [
        ("openai", "gpt-5-ultra", "no such model"),
        ("openai", "gpt-9", "no such model"),
        ("google", "gemini-ultra", "left the price data: unknown now"),
        ("google", "claude-3-haiku", "the data prices Claude on Vertex under google; the Gemini API has none"),
        ("openai", "text-embedding-3-small", "an embedding model cannot write a page"),
        ("openai", "gpt-4o-mini-tts", "a speech model"),
        ("openai", "GPT-4o", "the APIs' ids are lower case"),
        ("openai", "gpt-4o" + "x" * 300, "longer than a model name can be stored"),
        ("openai", "", "empty"),
        ("simulated", "local-page", "another provider's model"),
        ("local", "gpt-4o", "another provider's model"),
    ],
)
def test_unknown_models_are_refused_with_a_short_reason(no_keys, provider, model, reason):
    with pytest.raises(catalogue.CatalogueError, match=rf"unknown model .* for provider '{provider}'") as excinfo:
        catalogue.lookup(provider, model)
    message = str(excinfo.value)
    assert "GET /api/ai/providers" in message and len(message) < 400, message
    assert catalogue.canonical_model(provider, model) == model  # unknown names keep their own name


def test_a_near_miss_gets_a_suggestion():
    with pytest.raises(catalogue.CatalogueError, match="did you mean gpt-5-mini"):
        catalogue.lookup("openai", "gpt-5-mni")


def test_unknown_providers_are_refused():
    with pytest.raises(catalogue.CatalogueError, match="unknown provider 'azure'; choose one of openai, anthropic"):
        catalogue.lookup("azure", "gpt-4o")


def test_an_openai_compatible_server_takes_any_model_name_and_known_names_stay_canonical(no_keys):
    no_keys.OPENAI_BASE_URL = "http://127.0.0.1:11434/v1"
    custom = catalogue.lookup("openai", "llama3.1:8b")
    assert (custom.name, custom.api_id, custom.context_tokens) == ("llama3.1:8b", "llama3.1:8b", None)
    assert catalogue.lookup("openai", "gpt-4o-2024-08-06").name == "gpt-4o"  # priced whatever the base URL
    no_keys.OPENAI_BASE_URL = "https://api.openai.com/v1"
    with pytest.raises(catalogue.CatalogueError):
        catalogue.lookup("openai", "llama3.1:8b")


# --------------------------------------------------------------------------- derived from the declarations


def test_provider_ids_configuration_and_defaults_come_from_the_declarations(no_keys):
    assert catalogue.PROVIDER_IDS == tuple(spec.id for spec in registry.PROVIDERS)
    assert catalogue.PROVIDER_IDS == ("openai", "anthropic", "google", "local", "simulated")
    assert [p for p in catalogue.PROVIDER_IDS if catalogue.provider_configured(p)] == ["local"]
    assert catalogue.default_provider() == "local"

    no_keys.ANTHROPIC_API_KEY = "sk-ant-test"
    no_keys.GEMINI_API_KEY = "gm-test"
    no_keys.AI_ENABLE_SIMULATED_PROVIDER = True
    assert [p for p in catalogue.PROVIDER_IDS if catalogue.provider_configured(p)] == [
        "anthropic", "google", "local", "simulated"
    ]  # fmt: skip
    assert catalogue.default_provider() == "anthropic", "the first configured in declaration order"
    assert catalogue.default_model("anthropic") == "claude-3-haiku"
    assert catalogue.default_model("google") == "gemini-2.0-flash"

    no_keys.AI_DEFAULT_PROVIDER, no_keys.AI_DEFAULT_MODEL = "google", "gemini-2.5-flash"
    assert (catalogue.default_provider(), catalogue.default_model("google")) == ("google", "gemini-2.5-flash")
    assert catalogue.default_model("anthropic") == "claude-3-haiku", "AI_DEFAULT_MODEL is for the default provider"
    assert catalogue.provider_configured("azure") is False


def test_every_declaration_is_complete_and_its_default_model_is_in_the_catalogue():
    for spec in registry.PROVIDERS:
        module_name, _, class_name = spec.implementation.partition(":")
        assert module_name.startswith("jobs.providers.") and class_name, spec.id
        assert isinstance(spec.models, DeclaredModels | PriceDataModels), spec.id
        assert catalogue.lookup(spec.id, spec.default_model).name == spec.default_model, spec.id
        for name, api_id in spec.api_ids.items():
            assert catalogue.lookup(spec.id, name).api_id == api_id


def test_providers_status_lists_the_models_from_the_price_data(no_keys):
    status = {p["id"]: p for p in catalogue.providers_status()}
    assert list(status) == list(catalogue.PROVIDER_IDS)
    openai = {m["name"]: m for m in status["openai"]["models"]}
    assert openai["gpt-5-mini"] == {
        "name": "gpt-5-mini", "aliases": ["gpt-5-mini-2025-08-07"], "context_tokens": 400_000, "deprecated": False
    }  # fmt: skip
    assert status["openai"]["models_from"] == "genai-prices" and status["local"]["models_from"] == "declared"
    assert {m["name"] for m in status["google"]["models"]} >= {"gemini-2.5-flash", "gemini-2.5-pro", "gemma-3"}
    assert not any(m["name"].startswith("claude") for m in status["google"]["models"])
    assert [m["name"] for m in status["simulated"]["models"]] == ["sim-small", "sim-large"]
    assert (status["local"]["available"], status["simulated"]["available"]) == (True, False)
    assert status["openai"]["any_model_name"] is False
    every_model = [m["name"] for p in status.values() for m in p["models"]]
    assert len(every_model) == len(set(every_model)) == len(catalogue.MODELS) > 100


# --------------------------------------------------------------------------- the price data in use


def _with_model(providers: list[price_types.Provider], provider_id: str, model: price_types.ModelInfo):
    changed = []
    for provider in providers:
        if provider.id == provider_id:
            provider = price_types.Provider(**{**vars(provider), "models": [*provider.models, model]})
        changed.append(provider)
    return changed


def test_the_catalogue_follows_the_price_data_in_use(price_data):
    new_model = price_types.ModelInfo(
        id="gpt-7-test",
        match=price_types.ClauseOr(or_=[price_types.ClauseEquals(equals="gpt-7-test"),
                                        price_types.ClauseEquals(equals="gpt-7-test-2027-01-01")]),
        context_window=2_000_000,
        prices=price_types.ModelPrice(input_mtok=Decimal("1"), output_mtok=Decimal("2")),
    )  # fmt: skip
    with pytest.raises(catalogue.CatalogueError):
        catalogue.lookup("openai", "gpt-7-test")

    data_snapshot.set_custom_snapshot(
        data_snapshot.DataSnapshot(providers=_with_model(price_data, "openai", new_model), from_auto_update=False)
    )
    info = catalogue.lookup("openai", "gpt-7-test-2027-01-01")
    assert (info.name, info.context_tokens, info.aliases) == ("gpt-7-test", 2_000_000, ("gpt-7-test-2027-01-01",))
    assert "gpt-7-test" in [m.name for m in catalogue.MODELS]

    data_snapshot.set_custom_snapshot(None)
    with pytest.raises(catalogue.CatalogueError):
        catalogue.lookup("openai", "gpt-7-test")


class _DataServer(ThreadingHTTPServer):
    """A loopback stand-in for the URL UpdatePrices fetches: serves one body with one status."""

    def __init__(self, status: int, body: bytes) -> None:
        self.reply = (status, body)
        super().__init__(("127.0.0.1", 0), _DataHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/data.json"


class _DataHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        status, body = self.server.reply
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


FETCHED = [
    {
        "id": "openai",
        "name": "OpenAI",
        "api_pattern": r"https://api\.openai\.com",
        "models": [
            {
                "id": "gpt-7-test",
                "match": {"equals": "gpt-7-test"},
                "context_window": 1_000_000,
                "prices": {"input_mtok": "1.5", "output_mtok": "6"},
            }
        ],
    }
]


def test_price_data_refresh_fetches_only_when_auto_update_is_on(settings, price_data):
    server = _DataServer(200, json.dumps(FETCHED).encode())
    try:
        settings.AI_PRICES_AUTO_UPDATE = False
        assert catalogue.price_data_refresh(url=server.url) is False
        assert catalogue.price_data_info()["source"] == "bundled"

        settings.AI_PRICES_AUTO_UPDATE = True
        assert catalogue.price_data_refresh(url=server.url) is True
        info = catalogue.price_data_info()
        assert info["source"] == "fetched" and info["version"].startswith(f"{catalogue.PRICE_DATA_PACKAGE_VERSION}+")
        assert catalogue.lookup("openai", "gpt-7-test").context_tokens == 1_000_000
        assert [m.provider for m in catalogue.MODELS if m.provider != "openai"] == ["local", "simulated", "simulated"]
    finally:
        server.shutdown()


@pytest.mark.parametrize("status, body", [(503, b"busy"), (200, b"{not json"), (200, b'{"a": "dict"}')])
def test_a_failed_fetch_keeps_the_data_in_use(settings, price_data, status, body):
    settings.AI_PRICES_AUTO_UPDATE = True
    server = _DataServer(status, body)
    try:
        with pytest.raises(catalogue.CatalogueError, match="cannot fetch price data"):
            catalogue.price_data_refresh(url=server.url)
    finally:
        server.shutdown()
    assert catalogue.price_data_info()["source"] == "bundled"
    assert catalogue.lookup("openai", "gpt-5-mini").name == "gpt-5-mini"
