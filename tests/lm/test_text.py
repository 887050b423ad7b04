"""The sans-io parsers on every chunking: same result however the text is cut."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from altoflow.lm import JsonListError, JsonListParser, LineSplitter

# -- helpers ---------------------------------------------------------------------------------


def split_lines(chunks: list[str], **kwargs: Any) -> list[str]:
    splitter = LineSplitter(**kwargs)
    out = []
    for chunk in chunks:
        out.extend(splitter.feed(chunk))
    return out + splitter.close()


def parse_list(chunks: list[str], **kwargs: Any) -> list[Any]:
    parser = JsonListParser(**kwargs)
    out = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out + parser.close()


def expected_lines(text: str, keep_empty: bool = False) -> list[str]:
    """The oracle: str.split, with the last piece dropped when the text ends in a newline."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    return lines if keep_empty else [line for line in lines if line.strip()]


def every_pair(text: str) -> list[list[str]]:
    return [[text[:i], text[i:]] for i in range(len(text) + 1)]


@st.composite
def chunkings(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]


@st.composite
def text_and_chunks(draw: st.DrawFn, texts: st.SearchStrategy[str]) -> tuple[str, list[str]]:
    text = draw(texts)
    return text, draw(chunkings(text))


# -- LineSplitter ----------------------------------------------------------------------------

LINES_TEXT = "Paris is in France.\r\n\nThe Seine flows through it.\n  \nIt has 2.1M people"


@pytest.mark.parametrize("chunks", every_pair(LINES_TEXT))
def test_a_line_split_across_any_pair_of_chunks(chunks: list[str]) -> None:
    assert split_lines(chunks) == [
        "Paris is in France.",
        "The Seine flows through it.",
        "It has 2.1M people",
    ]


@pytest.mark.parametrize("chunks", every_pair(LINES_TEXT))
def test_keep_empty_keeps_blank_lines_on_any_pair_of_chunks(chunks: list[str]) -> None:
    assert split_lines(chunks, keep_empty=True) == expected_lines(LINES_TEXT, keep_empty=True)
    assert "" in split_lines(chunks, keep_empty=True)


def test_each_line_is_given_back_by_the_chunk_that_ends_it() -> None:
    splitter = LineSplitter()
    assert splitter.feed("first li") == []
    assert splitter.pending == "first li"
    assert splitter.feed("ne\nsecond") == ["first line"]
    assert splitter.feed(" line\nthi") == ["second line"]
    assert splitter.close() == ["thi"]


def test_a_text_ending_in_a_newline_has_no_extra_line() -> None:
    assert split_lines(["a\n", "b\n"], keep_empty=True) == ["a", "b"]


def test_feed_after_close_is_an_error() -> None:
    splitter = LineSplitter()
    splitter.close()
    with pytest.raises(ValueError, match=r"feed\(\) was called after close\(\)"):
        splitter.feed("x")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text_and_chunks(st.text(alphabet="ab \r\n\t", max_size=40)), st.booleans())
def test_lines_do_not_depend_on_the_chunking(case: tuple[str, list[str]], keep_empty: bool) -> None:
    text, chunks = case
    assert split_lines(chunks, keep_empty=keep_empty) == expected_lines(text, keep_empty)


# -- JsonListParser --------------------------------------------------------------------------

TRICKY = (
    ' [ "a \\" ] , [" , {", \\\\": "b\\u00e9\\n", "k": [1, {"x": "]}"}], "s": "\\\\"}, '
    '-12.5e3 , true,false , null,[], {}, [[]], "", "é ✓", 0 ]  '
)
TRICKY_VALUE = json.loads(TRICKY)


@pytest.mark.parametrize("chunks", every_pair(TRICKY))
def test_a_list_split_across_any_pair_of_chunks(chunks: list[str]) -> None:
    assert parse_list(chunks) == TRICKY_VALUE


def test_elements_come_back_as_soon_as_they_close() -> None:
    parser = JsonListParser()
    assert parser.feed('["first claim"') == ["first claim"]  # the closing quote is enough
    assert parser.feed(', {"a": [1, 2]') == []
    assert parser.feed("}") == [{"a": [1, 2]}]
    assert parser.feed(", 12") == []  # 12 could still become 123
    assert parser.feed("3") == []
    assert parser.feed(" ") == [123]
    assert parser.elements == 3
    assert not parser.done
    assert parser.feed(", true]") == [True]
    assert parser.done
    assert parser.close() == []


def test_empty_list() -> None:
    assert parse_list(["[", " ]"]) == []


def test_lenient_skips_prose_and_fences_around_the_list() -> None:
    text = 'Sure! Here are the queries:\n```json\n["thames source", "thames length"]\n```\n'
    assert parse_list([text], lenient=True) == ["thames source", "thames length"]
    with pytest.raises(
        JsonListError, match=r"expected '\[' to start a JSON list, got 'S'.*lenient=True"
    ):
        parse_list([text])


def test_text_after_the_list_is_judged_at_close() -> None:
    parser = JsonListParser()
    assert parser.feed('["a"] and then') == ["a"]
    assert parser.done
    with pytest.raises(JsonListError, match="text after the end of the list.*lenient=True") as info:
        parser.close()
    assert info.value.offset == 6


@pytest.mark.parametrize(
    ("text", "message", "offset"),
    [
        ('["a",]', "trailing comma", 5),
        ("[1,,2]", "a ',' where element 1 should begin", 3),
        ('["a" "b"]', "expected ',' or ']' after element 0, got '\"'", 5),
        ("[1 2]", "expected ',' or ']' after element 0, got '2'", 3),
        ('[{"a": [1}]', "element 0 opens '\\[' but closes it with '}'", 9),
        ("[tru]", "element 0 is not valid JSON", 3),
        ('[{"a" 1}]', "element 0 is not valid JSON", 7),
        ('["tab\tinside"]', "element 0 is not valid JSON", 12),
    ],
)
def test_malformed_lists_say_what_and_where(text: str, message: str, offset: int) -> None:
    with pytest.raises(JsonListError, match=message) as info:
        parse_list([text])
    assert info.value.offset == offset
    assert f"at character {offset}" in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('["a", "b"', "ended inside the list .* after 2 complete element\\(s\\).*max_tokens"),
        ('["a", "b', "ended inside the list \\(inside a string element\\) after 1"),
        ("   ", "the text ended and no JSON list was found"),
        ("", "the text ended and no JSON list was found"),
    ],
)
def test_a_list_that_never_closes_fails_at_close(text: str, message: str) -> None:
    with pytest.raises(JsonListError, match=message):
        parse_list([text])


def test_a_failed_parser_stays_failed() -> None:
    parser = JsonListParser()
    with pytest.raises(JsonListError):
        parser.feed("[1,,")
    with pytest.raises(JsonListError, match="already failed"):
        parser.feed("2]")
    with pytest.raises(JsonListError):
        parser.close()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def json_list_texts(draw: st.DrawFn) -> tuple[list[Any], str]:
    value = draw(st.lists(json_values, max_size=6))
    indent = draw(st.sampled_from([None, 0, 2]))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]))
    ascii_only = draw(st.booleans())
    text = json.dumps(value, indent=indent, separators=separators, ensure_ascii=ascii_only)
    pad = draw(st.sampled_from(["", " ", "\n", "\r\n\t "]))
    return value, pad + text + pad


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_list_on_any_chunking_parses_to_what_json_loads_gives(data: st.DataObject) -> None:
    value, text = data.draw(json_list_texts())
    chunks = data.draw(chunkings(text))
    assert parse_list(chunks) == json.loads(text) == value


def mutate(text: str, edits: list[tuple[int, int, str]]) -> str:
    for position, kind, char in edits:
        i = position % (len(text) + 1)
        if kind == 0:
            text = text[:i] + char + text[i:]
        elif kind == 1:
            text = text[:i] + text[i + 1 :]
        else:
            text = text[:i] + char + text[i + 1 :]
    return text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_text_parses_like_json_loads_or_raises_json_list_error(data: st.DataObject) -> None:
    # The one invariant of a fuzzed parser: it agrees with the reference, or it raises its own
    # error, never anything else.
    _, text = data.draw(json_list_texts())
    edits = data.draw(
        st.lists(
            st.tuples(st.integers(0, 200), st.integers(0, 2), st.sampled_from('[]{},:"\\ 1ae\n')),
            max_size=3,
        )
    )
    text = mutate(text, edits)
    chunks = data.draw(chunkings(text))
    try:
        reference = json.loads(text)
    except ValueError:
        reference = None
    if isinstance(reference, list):
        assert parse_list(chunks) == reference
    else:
        with pytest.raises(JsonListError):
            parse_list(chunks)
