"""The offline provider: a deterministic page built from the prompt, no network.

It is the default when no API key is configured, so a fresh checkout can run jobs end to
end. The same prompt always gives byte-identical JSON text, and usage is estimated the way
a real model would bill it (about four characters per token, plus a fixed system prompt).
"""

from __future__ import annotations

import hashlib
import json
import math
import re

from jobs.providers.base import CallContext, Provider, ProviderError, ProviderResponse, Usage

MODEL = "local-page"
SYSTEM_PROMPT_TOKENS = 50
CHARS_PER_TOKEN = 4
FALLBACK_TITLE = "Untitled page"

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Control characters other than newline and tab: Postgres cannot store NUL in jsonb, and none belong in a page.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SMALL_WORDS = frozenset("a an and as at but by for from in into nor of on or per the to via vs with".split())
_STOP_WORDS = frozenset(
    "about also based been build called create does each from have include includes including into just landing "
    "like make many more most much named need page please section sections should some such than that their them "
    "then there these they this using very want website what when where which while will with would your".split()
)
_DEFAULT_TOPICS = ("quality", "simplicity", "support")
_ICONS = ("star", "bolt", "shield")


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


class LocalProvider(Provider):
    id = "local"

    def generate(self, *, prompt: str, model: str, ctx: CallContext) -> ProviderResponse:
        if model != MODEL:
            raise ProviderError(
                f"model '{model}' not found; the local provider offers {MODEL}",
                provider=self.id,
                status=404,
                code="model_not_found",
            )
        text = json.dumps(build_page(prompt), ensure_ascii=False, separators=(",", ":"))
        usage = Usage(
            prompt_tokens=estimate_tokens(prompt) + SYSTEM_PROMPT_TOKENS,
            completion_tokens=estimate_tokens(text),
        )
        digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()
        return ProviderResponse(text=text, usage=usage, request_id=f"local-{digest[:16]}")


def build_page(prompt: str) -> dict:
    """The page for ``prompt``: valid against the page schema for any prompt."""
    body = _clean(prompt).strip()
    flat = " ".join(body.split())
    title = _title(flat)
    description = _fit(flat, 300) if flat else f"{title}, generated offline by the local provider."
    keywords = _keywords(flat)
    topics = list(keywords[:3])
    topics += [topic for topic in _DEFAULT_TOPICS if topic not in {t.lower() for t in topics}][: 3 - len(topics)]
    return {
        "title": title,
        "meta": {"description": description, "keywords": keywords, "language": "en"},
        "sections": [
            {
                "id": "hero",
                "type": "hero",
                "heading": title,
                "subheading": description,
                "cta_label": "Get started",
                "cta_url": "#get-started",
            },
            {
                "id": "features",
                "type": "features",
                "heading": "Highlights",
                "items": [
                    {
                        "title": _fit(_capitalize(topic), 100),
                        "description": _fit(f"{_capitalize(topic)} is at the heart of {title}.", 500),
                        "icon": icon,
                    }
                    for topic, icon in zip(topics, _ICONS, strict=True)
                ],
            },
            {
                "id": "overview",
                "type": "text",
                "heading": "Overview",
                "body": _fit(body, 10_000) if body else "No description was provided.",
            },
            {
                "id": "faq",
                "type": "faq",
                "heading": "Frequently asked questions",
                "items": [
                    {"question": _fit(f"What is {title}?", 300), "answer": description},
                    {
                        "question": "How do I get started?",
                        "answer": "Use the Get started button on this page and we will take it from there.",
                    },
                    {
                        "question": "Who can I ask about something else?",
                        "answer": "Reach us through the contact links at the bottom of the page.",
                    },
                ],
            },
            {
                "id": "get-started",
                "type": "cta",
                "heading": "Ready to get started?",
                "body": _fit(f"{title} is ready when you are.", 1000),
                "button_label": "Contact us",
                "button_url": "#contact",
            },
            {
                "id": "contact",
                "type": "footer",
                "text": _fit(f"© {title}", 500),
                "links": [
                    {"label": "Overview", "url": "#overview"},
                    {"label": "FAQ", "url": "#faq"},
                    {"label": "Back to top", "url": "#hero"},
                ],
            },
        ],
    }


def _clean(text: str) -> str:
    # Lone surrogates cannot be encoded as UTF-8; replace them rather than fail the job.
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def _title(flat: str) -> str:
    words = _WORD.findall(_SENTENCE_END.split(flat, 1)[0])
    if len(words) < 2:  # "Dr. Smith's clinic" or a first "sentence" of punctuation
        words = _WORD.findall(flat)
    if not words:
        return FALLBACK_TITLE
    cased = [_title_word(word, first=index == 0) for index, word in enumerate(words[:8])]
    return _fit(" ".join(cased), 200)


def _title_word(word: str, *, first: bool) -> str:
    if len(word) > 1 and any(ch.isupper() for ch in word[1:]):
        return word  # acronyms and brand spellings: AI, SaaS, iPhone
    if not first and word.lower() in _SMALL_WORDS:
        return word.lower()
    return _capitalize(word)


def _capitalize(word: str) -> str:
    head = word[:1].upper()
    # Some letters have no single-letter capital ("ß".upper() == "SS"); leave those alone.
    return (head if len(head) == 1 else word[:1]) + word[1:]


def _keywords(flat: str) -> list[str]:
    """Up to five distinct longer words, in order of first appearance, as first written."""
    found: list[str] = []
    seen: set[str] = set()
    for word in _WORD.findall(flat):
        key = word.lower()
        if 4 <= len(word) <= 50 and key not in _STOP_WORDS and key not in seen:
            seen.add(key)
            found.append(word)
            if len(found) == 5:
                break
    return found


def _fit(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, at a word boundary when one is near, with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    boundary = max(cut.rfind(" "), cut.rfind("\n"))
    if boundary > limit // 2:
        cut = cut[:boundary]
    return cut.rstrip() + "…"
