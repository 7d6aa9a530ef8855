"""The offline provider: valid, deterministic pages and honest usage. Pure Python: no Django, no network."""

from __future__ import annotations

import hashlib
import json
import math
import re

import pytest

from jobs.providers.base import CallContext, Provider, ProviderError, ProviderResponse
from jobs.providers.local import LocalProvider
from jobs.schema import parse_page, validate_page

MODEL = "local-page"
SYSTEM_PROMPT_TOKENS = 50
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

PROMPTS = {
    "plain": "Build a landing page for my bakery in Lisbon. It sells sourdough and pastries.",
    "one-char": "a",
    "20k-words": ("Design a modern website for a cycling club with routes, events and membership. " * 260)[:20_000],
    "20k-one-word": "x" * 20_000,
    "unicode": "Página para a padaria café — 日本語のページ 🚲🥐 مرحبا بالعالم e\u0301 Straße ß ǆ",
    "only-punctuation": "!!! ??? ... ,,, ;;; --- —— … «» ¿¡",
    "only-whitespace": "   \n\t \r\n  \u3000 ",
    "newlines": "Line one of the brief\n\nSecond paragraph\r\nthird line\rfourth\n\n\n",
    "quotes": 'He said "make it pop" and \'keep it clean\' \\ backslash \\" `ticks` {"title": 1}',
    "control-chars": "Bakery\x00 page\x07 with\x1b[31m colours\x7f",
    "lone-surrogate": "Broken \ud800 surrogate page",
    "markdown-and-html": "# Heading\n```json\n{}\n```\n<script>alert(1)</script> **bold**",
    "long-first-sentence": " ".join(f"word{i}" for i in range(500)) + ".",
    "abbreviation": "Dr. Smith's dental clinic website with opening hours",
}


def _ctx(job_id: str = "job-1", attempt: int = 1) -> CallContext:
    return CallContext(job_id=job_id, attempt=attempt, options={}, timeout=30.0)


def _generate(prompt: str, **ctx) -> ProviderResponse:
    return LocalProvider().generate(prompt=prompt, model=MODEL, ctx=_ctx(**ctx))


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [text for item in value for text in _strings(item)] if isinstance(value, list) else []


def _sections(page: dict) -> dict[str, dict]:
    return {section["type"]: section for section in page["sections"]}


@pytest.mark.parametrize("prompt", PROMPTS.values(), ids=PROMPTS.keys())
def test_the_page_is_valid_for_any_prompt(prompt):
    response = _generate(prompt)
    page = parse_page(response.text)
    assert validate_page(page) == []
    assert [s["type"] for s in page["sections"]] == ["hero", "features", "text", "faq", "cta", "footer"]
    assert len(_sections(page)["features"]["items"]) == 3
    assert page["meta"]["language"] == "en"
    # Postgres jsonb refuses NUL and UTF-8 refuses lone surrogates: neither may reach the page
    response.text.encode("utf-8")
    assert not [text for text in _strings(page) if CONTROL.search(text)]


@pytest.mark.parametrize("prompt", PROMPTS.values(), ids=PROMPTS.keys())
def test_the_same_prompt_gives_byte_identical_output(prompt):
    first = _generate(prompt, job_id="a", attempt=1)
    second = LocalProvider().generate(prompt=prompt, model=MODEL, ctx=_ctx(job_id="b", attempt=7))
    assert first == second


@pytest.mark.parametrize("prompt", PROMPTS.values(), ids=PROMPTS.keys())
def test_usage_and_request_id_follow_the_formula(prompt):
    response = _generate(prompt)
    usage = response.usage
    assert usage is not None
    assert usage.prompt_tokens == math.ceil(len(prompt) / 4) + SYSTEM_PROMPT_TOKENS
    assert usage.completion_tokens == math.ceil(len(response.text) / 4)
    assert (usage.cached_tokens, usage.cache_write_tokens) == (0, 0)
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()
    assert response.request_id == f"local-{digest[:16]}"


def test_usage_for_a_known_prompt():
    response = _generate("abcd" * 10 + "e")  # 41 characters -> 11 tokens
    assert response.usage.prompt_tokens == 11 + 50
    assert response.request_id == "local-" + hashlib.sha256(b"abcd" * 10 + b"e").hexdigest()[:16]


def test_different_prompts_give_different_pages():
    assert _generate("A page for a bakery").text != _generate("A page for a bike shop").text
    assert _generate("A page for a bakery").request_id != _generate("A page for a bike shop").request_id


def test_the_text_is_compact_json_with_unicode_kept():
    text = _generate(PROMPTS["unicode"]).text
    assert text == json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))
    assert "日本語" in text and "\\u" not in text


@pytest.mark.parametrize(
    ("prompt", "title"),
    [
        ("Build a landing page for my bakery. It sells bread.", "Build a Landing Page for My Bakery"),
        (
            "an AI startup called NovaDesk with SaaS pricing and more words here",
            "An AI Startup Called NovaDesk with SaaS Pricing",
        ),
        ("Dr. Smith's dental clinic", "Dr Smith's Dental Clinic"),
        ("Straße in the city", "Straße in the City"),
        ("ß is a letter", "ß Is a Letter"),
        ("!!! ??? ...", "Untitled page"),
        (" \n\t ", "Untitled page"),
    ],
)
def test_the_title_comes_from_the_first_sentence(prompt, title):
    page = json.loads(_generate(prompt).text)
    assert page["title"] == title
    assert _sections(page)["hero"]["heading"] == title


def test_a_huge_prompt_gives_a_title_and_description_within_limits():
    page = json.loads(_generate(PROMPTS["20k-one-word"]).text)
    assert 1 <= len(page["title"]) <= 200 and page["title"].endswith("…")
    assert 1 <= len(page["meta"]["description"]) <= 300
    assert len(_sections(page)["text"]["body"]) == 10_000


def test_the_text_block_contains_the_prompt():
    prompt = '  First paragraph about the shop.\n\nSecond paragraph with "quotes" and émojis 🥐.  '
    page = json.loads(_generate(prompt).text)
    assert _sections(page)["text"]["body"] == prompt.strip()
    assert (
        page["meta"]["description"] == 'First paragraph about the shop. Second paragraph with "quotes" and émojis 🥐.'
    )


def test_keywords_are_distinct_longer_words_from_the_prompt():
    prompt = "Bakery bakery BAKERY sourdough pastries and a cafe in Lisbon with sourdough"
    keywords = json.loads(_generate(prompt).text)["meta"]["keywords"]
    assert keywords == ["Bakery", "sourdough", "pastries", "cafe", "Lisbon"]
    features = _sections(json.loads(_generate(prompt).text))["features"]["items"]
    assert [item["title"] for item in features] == ["Bakery", "Sourdough", "Pastries"]


def test_a_prompt_without_words_gets_fallback_content():
    page = json.loads(_generate("?!").text)
    assert page["meta"]["keywords"] == []
    assert [item["title"] for item in _sections(page)["features"]["items"]] == ["Quality", "Simplicity", "Support"]
    page = json.loads(_generate("   ").text)
    assert _sections(page)["text"]["body"] == "No description was provided."


def test_an_unknown_model_is_a_model_not_found_error():
    with pytest.raises(ProviderError) as raised:
        LocalProvider().generate(prompt="hi", model="gpt-4o", ctx=_ctx())
    error = raised.value
    assert (error.provider, error.status, error.code) == ("local", 404, "model_not_found")
    assert "gpt-4o" in error.message


def test_it_is_a_provider_with_the_local_id():
    provider = LocalProvider()
    assert isinstance(provider, Provider)
    assert provider.id == "local"
