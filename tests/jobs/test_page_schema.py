"""The page schema, validate_page and parse_page. Pure Python: no Django, no database."""

from __future__ import annotations

import json

import fastjsonschema
import pytest
from jsonschema import Draft202012Validator

from jobs.schema import (
    _VALIDATOR,
    BLOCK_TYPES,
    MAX_ERRORS,
    PAGE_SCHEMA,
    PageInvalid,
    _fast_check,
    model_schema,
    parse_page,
    validate_page,
)

ALL_BLOCK_TYPES = ("hero", "features", "text", "gallery", "testimonials", "pricing", "faq", "cta", "footer")

# The keywords OpenAI strict structured outputs and Gemini's JSON-schema subset have in common.
PORTABLE_KEYWORDS = {
    "$schema",
    "$defs",
    "$ref",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "anyOf",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "description",
}


def sample_page() -> dict:
    """A page using every block type once, in ALL_BLOCK_TYPES order."""
    return {
        "title": "Nova Bakery",
        "meta": {"description": "Sourdough from Lisbon.", "keywords": ["bakery", "sourdough"], "language": "en"},
        "sections": [
            {
                "id": "hero",
                "type": "hero",
                "heading": "Bread worth waking up for",
                "subheading": "Baked every morning.",
                "cta_label": "Order now",
                "cta_url": "https://example.com/order",
            },
            {
                "id": "features",
                "type": "features",
                "heading": "Why us",
                "items": [{"title": "Slow dough", "description": "Fermented for 48 hours.", "icon": "clock"}],
            },
            {"id": "story", "type": "text", "heading": "Our story", "body": "Since 1998.\n\nStill kneading."},
            {
                "id": "gallery",
                "type": "gallery",
                "heading": "The shop",
                "images": [{"url": "/img/shop.jpg", "alt": "The shop front", "caption": ""}],
            },
            {
                "id": "testimonials",
                "type": "testimonials",
                "heading": "Regulars",
                "items": [{"quote": "Best crust in town.", "author": "Ana", "role": ""}],
            },
            {
                "id": "pricing",
                "type": "pricing",
                "heading": "Bread club",
                "plans": [
                    {"name": "Weekly", "price": "€20", "period": "month", "features": [], "cta_label": "Join"},
                    {
                        "name": "Yearly",
                        "price": "€200",
                        "period": "year",
                        "features": ["Free croissant"],
                        "cta_label": "Join",
                    },
                    {"name": "Tasting", "price": "€5", "period": "once", "features": [], "cta_label": "Buy"},
                ],
            },
            {
                "id": "faq",
                "type": "faq",
                "heading": "Questions",
                "items": [{"question": "Gluten free?", "answer": "Not yet."}],
            },
            {
                "id": "cta",
                "type": "cta",
                "heading": "Hungry?",
                "body": "Come by.",
                "button_label": "Directions",
                "button_url": "#map",
            },
            {"id": "footer", "type": "footer", "text": "© Nova Bakery", "links": [{"label": "Privacy", "url": "/p"}]},
        ],
    }


def _index(kind: str) -> int:
    return ALL_BLOCK_TYPES.index(kind)


def _walk_schemas(node: dict, where: str = "#"):
    """Yield (location, schema) for every schema object in the schema document."""
    yield where, node
    for name, sub in node.get("$defs", {}).items():
        yield from _walk_schemas(sub, f"{where}/$defs/{name}")
    for name, sub in node.get("properties", {}).items():
        yield from _walk_schemas(sub, f"{where}/properties/{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk_schemas(node["items"], f"{where}/items")
    for index, sub in enumerate(node.get("anyOf", [])):
        yield from _walk_schemas(sub, f"{where}/anyOf/{index}")


# -- the schema document ------------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema():
    assert PAGE_SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(PAGE_SCHEMA)


def test_schema_uses_only_keywords_common_to_openai_strict_and_gemini():
    for where, node in _walk_schemas(PAGE_SCHEMA):
        unexpected = set(node) - PORTABLE_KEYWORDS
        assert not unexpected, f"{where} uses {sorted(unexpected)}"


def test_every_object_is_closed_and_requires_all_its_properties():
    objects = [(where, node) for where, node in _walk_schemas(PAGE_SCHEMA) if node.get("type") == "object"]
    assert len(objects) > 15
    for where, node in objects:
        assert node["additionalProperties"] is False, where
        assert sorted(node["required"]) == sorted(node["properties"]), where


def test_every_string_and_array_is_bounded():
    for where, node in _walk_schemas(PAGE_SCHEMA):
        if node.get("type") == "string" and "enum" not in node:
            assert {"minLength", "maxLength"} <= set(node), where
        if node.get("type") == "array":
            assert {"minItems", "maxItems"} <= set(node), where


def test_refs_have_no_sibling_keywords_and_resolve():
    refs = [(where, node) for where, node in _walk_schemas(PAGE_SCHEMA) if "$ref" in node]
    assert len(refs) == len(ALL_BLOCK_TYPES)
    for where, node in refs:
        assert set(node) == {"$ref"}, where
        assert node["$ref"].removeprefix("#/$defs/") in PAGE_SCHEMA["$defs"], where


def test_the_nine_block_types_each_pin_their_type_and_carry_an_id():
    assert BLOCK_TYPES == ALL_BLOCK_TYPES
    for kind in ALL_BLOCK_TYPES:
        block = PAGE_SCHEMA["$defs"][kind]
        assert block["properties"]["type"]["enum"] == [kind]
        assert "id" in block["required"]


def test_top_level_limits_match_the_contract():
    props = PAGE_SCHEMA["properties"]
    assert (props["title"]["minLength"], props["title"]["maxLength"]) == (1, 200)
    assert (props["sections"]["minItems"], props["sections"]["maxItems"]) == (1, 30)
    meta = props["meta"]["properties"]
    assert (meta["description"]["minLength"], meta["description"]["maxLength"]) == (1, 300)
    assert (meta["keywords"]["minItems"], meta["keywords"]["maxItems"]) == (0, 20)
    assert (meta["language"]["minLength"], meta["language"]["maxLength"]) == (2, 10)


@pytest.mark.parametrize(
    ("kind", "field", "low", "high"),
    [
        ("features", "items", 1, 12),
        ("gallery", "images", 1, 24),
        ("testimonials", "items", 1, 12),
        ("pricing", "plans", 1, 6),
        ("faq", "items", 1, 30),
        ("footer", "links", 0, 20),
    ],
)
def test_block_list_limits_match_the_contract(kind, field, low, high):
    prop = PAGE_SCHEMA["$defs"][kind]["properties"][field]
    assert (prop["minItems"], prop["maxItems"]) == (low, high)
    page = sample_page()
    template = page["sections"][_index(kind)][field][0] if low else {"label": "x", "url": "/"}
    for count, ok in ((low, True), (high, True), (high + 1, False)) + (((low - 1, False),) if low else ()):
        page["sections"][_index(kind)][field] = [template] * count
        assert (validate_page(page) == []) is ok, (kind, count)


def test_text_body_limit_and_pricing_periods_match_the_contract():
    body = PAGE_SCHEMA["$defs"]["text"]["properties"]["body"]
    assert (body["minLength"], body["maxLength"]) == (1, 10_000)
    assert PAGE_SCHEMA["$defs"]["pricing"]["properties"]["plans"]["items"]["properties"]["period"]["enum"] == [
        "month",
        "year",
        "once",
    ]


# -- validate_page ------------------------------------------------------------------------


def test_a_full_page_with_every_block_type_is_valid():
    page = sample_page()
    assert [section["type"] for section in page["sections"]] == list(ALL_BLOCK_TYPES)
    assert validate_page(page) == []


def _set(path: str, value):
    def mutate(page: dict) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
        target = page
        for part in parents:
            target = target[part]
        target[last] = value

    return mutate


def _delete(path: str):
    def mutate(page: dict) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
        target = page
        for part in parents:
            target = target[part]
        del target[last]

    return mutate


S = "sections"
BROKEN_PAGES = [
    ("missing title", _delete("title"), "(root): 'title' is a required property"),
    ("null title", _set("title", None), "title: expected string, got null"),
    ("too-long title", _set("title", "x" * 201), f"title: '{'x' * 40}…' is too long (201 characters, at most 200)"),
    ("extra top-level property", _set("author", "me"), "(root): unexpected property 'author'"),
    ("extra meta property", _set("meta/robots", "noindex"), "meta: unexpected property 'robots'"),
    ("keywords not an array", _set("meta/keywords", "a, b"), "meta/keywords: expected array, got string"),
    ("language too short", _set("meta/language", "e"), "meta/language: 'e' is too short (at least 2 characters)"),
    ("empty sections", _set(S, []), "sections: too few items (0, at least 1)"),
    ("sections not an array", _set(S, {}), "sections: expected array, got object"),
    (
        "unknown block type",
        _set(f"{S}/0/type", "banner"),
        "sections/0/type: 'banner' is not a block type; expected one of " + ", ".join(ALL_BLOCK_TYPES),
    ),
    ("section without type", _delete(f"{S}/4/type"), "sections/4: 'type' is a required property"),
    ("section not an object", _set(f"{S}/0", "hero"), "sections/0: expected object, got string"),
    ("block missing id", _delete(f"{S}/2/id"), "sections/2: 'id' is a required property"),
    ("extra block property", _set(f"{S}/2/color", "red"), "sections/2: unexpected property 'color'"),
    ("empty heading", _set(f"{S}/1/heading", ""), "sections/1/heading: '' is too short (at least 1 character)"),
    ("missing cta url", _delete(f"{S}/7/button_url"), "sections/7: 'button_url' is a required property"),
    (
        "bad pricing period",
        _set(f"{S}/5/plans/0/period", "week"),
        "sections/5/plans/0/period: 'week' is not one of 'month', 'year', 'once'",
    ),
    ("price as a number", _set(f"{S}/5/plans/1/price", 200), "sections/5/plans/1/price: expected string, got integer"),
    (
        "extra feature item property",
        _set(f"{S}/1/items/0/link", "/x"),
        "sections/1/items/0: unexpected property 'link'",
    ),
    (
        "too many gallery images",
        _set(f"{S}/3/images", [{"url": "/a.jpg", "alt": "a", "caption": ""}] * 25),
        "sections/3/images: too many items (25, at most 24)",
    ),
    ("footer text not a string", _set(f"{S}/8/text", True), "sections/8/text: expected string, got boolean"),
    (
        "fields of another block",
        _set(f"{S}/0/body", "hero with a text body"),
        "sections/0: unexpected property 'body'",
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), [case[1:] for case in BROKEN_PAGES], ids=[c[0] for c in BROKEN_PAGES])
def test_a_broken_page_is_rejected_with_the_path_of_the_problem(mutate, expected):
    page = sample_page()
    mutate(page)
    assert validate_page(page) == [expected]


def test_too_many_sections_is_reported_once():
    page = sample_page()
    page["sections"] = [page["sections"][2]] * 31
    assert validate_page(page) == ["sections: too many items (31, at most 30)"]


@pytest.mark.parametrize(
    ("value", "kind"), [(None, "null"), ([], "array"), ("page", "string"), (3, "integer"), (1.5, "number")]
)
def test_a_non_object_is_not_a_page(value, kind):
    assert validate_page(value) == [f"(root): expected object, got {kind}"]


def test_errors_are_sorted_by_path_with_numeric_indexes_and_capped_at_ten():
    page = sample_page()
    page["sections"] = [{"id": f"s{i}", "type": "text", "heading": "", "body": "b"} for i in range(15)]
    page["title"] = ""
    errors = validate_page(page)
    assert MAX_ERRORS == 10
    assert len(errors) == 10
    # sections/2 sorts before sections/10 (numerically), and "sections" before "title"
    assert errors == [f"sections/{i}/heading: '' is too short (at least 1 character)" for i in range(10)]


def test_messages_stay_short_when_the_offending_value_is_huge():
    page = sample_page()
    page["sections"][2]["body"] = "word " * 5000
    page["sections"][0]["type"] = "x" * 10_000
    errors = validate_page(page)
    assert len(errors) == 2
    assert all(len(message) < 250 for message in errors), errors
    assert errors[1].startswith("sections/2/body: 'word word") and errors[1].endswith("at most 10000)")


def test_validation_does_not_change_the_page():
    page = sample_page()
    page["sections"][0]["extra"] = 1
    before = json.dumps(page, sort_keys=True)
    validate_page(page)
    assert json.dumps(page, sort_keys=True) == before


def test_changing_page_schema_in_memory_does_not_change_validation(monkeypatch):
    monkeypatch.setitem(PAGE_SCHEMA["properties"]["title"], "maxLength", 3)
    assert validate_page(sample_page()) == []


# -- parse_page ---------------------------------------------------------------------------


def test_parse_page_returns_the_page():
    text = json.dumps(sample_page(), ensure_ascii=False)
    assert parse_page(text) == sample_page()


@pytest.mark.parametrize(
    "wrap",
    [
        "```json\n{}\n```",
        "```\n{}\n```",
        "```JSON\r\n{}\r\n```",
        "\n  ```json\n{}\n```  \n",
        "```json{}```",
    ],
    ids=["json-fence", "bare-fence", "crlf-uppercase", "surrounding-whitespace", "one-line"],
)
def test_parse_page_accepts_a_markdown_code_fence(wrap):
    text = wrap.replace("{}", json.dumps(sample_page(), indent=2))
    assert parse_page(text) == sample_page()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "",
        "   ",
        '{"title": "cut off by max_tokens',
        "Here is your page:\n```json\n{}\n```",
        "```python\n{}\n```",
        "```json\n{}\n```\nHope this helps!",
        "{} trailing",
        '{"title": NaN}',
    ],
    ids=[
        "prose",
        "empty",
        "whitespace",
        "truncated",
        "prose-before-fence",
        "other-language-fence",
        "prose-after-fence",
        "trailing-text",
        "nan",
    ],
)
def test_parse_page_rejects_text_that_is_not_json(text):
    text = text.replace("{}", json.dumps(sample_page()))
    with pytest.raises(PageInvalid) as raised:
        parse_page(text)
    assert str(raised.value).startswith("model output is not valid JSON: ")
    assert raised.value.errors and raised.value.errors[0]


def test_parse_page_reports_the_json_error():
    with pytest.raises(PageInvalid) as raised:
        parse_page("not json")
    assert str(raised.value) == "model output is not valid JSON: Expecting value: line 1 column 1 (char 0)"
    assert raised.value.errors == ["Expecting value: line 1 column 1 (char 0)"]


def test_parse_page_rejects_a_json_array():
    with pytest.raises(PageInvalid) as raised:
        parse_page(json.dumps([sample_page()]))
    assert str(raised.value) == "model output is not a valid page: (root): expected object, got array"
    assert raised.value.errors == ["(root): expected object, got array"]


def test_parse_page_rejects_an_invalid_page_with_the_first_error_and_a_count():
    page = sample_page()
    del page["title"]
    page["sections"][5]["plans"][0]["period"] = "weekly"
    with pytest.raises(PageInvalid) as raised:
        parse_page(json.dumps(page))
    assert str(raised.value) == "model output is not a valid page: (root): 'title' is a required property (+1 more)"
    assert raised.value.errors == [
        "(root): 'title' is a required property",
        "sections/5/plans/0/period: 'weekly' is not one of 'month', 'year', 'once'",
    ]


def test_the_count_covers_errors_beyond_the_ten_listed():
    page = sample_page()
    page["sections"] = [{"id": f"s{i}", "type": "text", "heading": "", "body": "b"} for i in range(15)]
    with pytest.raises(PageInvalid) as raised:
        parse_page(json.dumps(page))
    assert str(raised.value).endswith("(at least 1 character) (+14 more)")
    assert len(raised.value.errors) == 10


def test_parse_page_survives_absurd_nesting():
    with pytest.raises(PageInvalid) as raised:
        parse_page("[" * 100_000 + "]" * 100_000)
    assert str(raised.value).startswith("model output is not")


def test_page_invalid_is_a_value_error():
    error = PageInvalid("bad", ["a", "b"])
    assert isinstance(error, ValueError)
    assert (str(error), error.message, error.errors) == ("bad", "bad", ["a", "b"])


# -- model_schema -------------------------------------------------------------------------


def test_model_schema_by_default_is_the_page_schema_without_dollar_schema():
    schema = model_schema()
    assert schema == {key: value for key, value in PAGE_SCHEMA.items() if key != "$schema"}
    schema["properties"]["title"]["maxLength"] = 1
    assert PAGE_SCHEMA["properties"]["title"]["maxLength"] == 200


def test_model_schema_without_string_lengths_or_refs_still_describes_the_page():
    schema = model_schema(string_lengths=False, refs=False)
    dumped = json.dumps(schema)
    for keyword in ("minLength", "maxLength", "$ref", "$defs", "$schema"):
        assert f'"{keyword}"' not in dumped
    validator = Draft202012Validator(schema)
    assert validator.is_valid(sample_page())
    page = sample_page()
    page["sections"][0]["type"] = "banner"
    assert not validator.is_valid(page)
    # lengths are dropped from the model's schema only: validation still enforces them
    page = sample_page()
    page["title"] = "x" * 201
    assert validator.is_valid(page)
    assert validate_page(page) != []


@pytest.mark.parametrize(("mutate", "expected"), [case[1:] for case in BROKEN_PAGES], ids=[c[0] for c in BROKEN_PAGES])
def test_the_compiled_fast_path_agrees_with_jsonschema(mutate, expected):
    page = sample_page()
    assert _VALIDATOR.is_valid(page)
    _fast_check(page)
    broken = sample_page()
    mutate(broken)
    assert not _VALIDATOR.is_valid(broken)
    with pytest.raises(fastjsonschema.JsonSchemaException):
        _fast_check(broken)
