from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from altoflow.retrieval import CorpusNotFoundError, DictEntry, load_foldoc, read_dictd
from altoflow.retrieval.corpora import decode_dictd_number

_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _encode(n: int) -> str:
    """dictd's base-64 numbers, written independently of the parser under test."""
    out = ""
    while True:
        n, digit = divmod(n, 64)
        out = _DIGITS[digit] + out
        if n == 0:
            return out


@pytest.mark.parametrize(
    ("digits", "value"),
    [("A", 0), ("B", 1), ("/", 63), ("BA", 64), ("BW", 86), ("Dp8J", 3 * 64**3 + 41 * 64**2 + 60 * 64 + 9)],
)
def test_decode_dictd_number(digits: str, value: int) -> None:
    assert decode_dictd_number(digits) == value


@pytest.mark.parametrize("digits", ["", "12=", "a b"])
def test_decode_dictd_number_rejects_garbage(digits: str) -> None:
    with pytest.raises(ValueError):
        decode_dictd_number(digits)


def _write_dictd(
    tmp_path: Path, entries: list[tuple[list[str], str]], compress: bool = True
) -> tuple[Path, Path]:
    """A dictd database as dictfmt lays it out: text blobs, and an index of headword -> span."""
    blob = b""
    index_lines = ["00-database-short\tA\tB"]  # dictd metadata, to be skipped
    for headwords, text in entries:
        start = len(blob)
        blob += text.encode("utf-8")
        for headword in headwords:
            index_lines.append(f"{headword}\t{_encode(start)}\t{_encode(len(text.encode('utf-8')))}")
    index_path = tmp_path / "test.index"
    index_path.write_text("\n".join(sorted(index_lines)) + "\n", encoding="utf-8")
    dict_path = tmp_path / ("test.dict.dz" if compress else "test.dict")
    dict_path.write_bytes(gzip.compress(blob) if compress else blob)
    return index_path, dict_path


@pytest.mark.parametrize("compress", [True, False])
def test_read_dictd_groups_aliases_and_unindents(tmp_path: Path, compress: bool) -> None:
    index_path, dict_path = _write_dictd(
        tmp_path,
        [
            (["dollar", "$"], 'dollar\n$\n\n   <character> The sign "$".\n\n   (1999-01-01)\n\n'),
            (["café"], "Café\n\n   <jargon> A place with coffee and {Unix}.\n"),
        ],
        compress=compress,
    )
    entries = read_dictd(index_path, dict_path)
    assert entries == [
        DictEntry(
            id="dollar",
            headwords=("$", "dollar"),
            text='dollar\n$\n\n<character> The sign "$".\n\n(1999-01-01)',
        ),
        DictEntry(id="Café", headwords=("café",), text="Café\n\n<jargon> A place with coffee and {Unix}."),
    ]


def test_read_dictd_makes_repeated_ids_unique(tmp_path: Path) -> None:
    index_path, dict_path = _write_dictd(
        tmp_path,
        [(["mta"], "MTA\n\n   Mail Transfer Agent.\n"), (["mta"], "MTA\n\n   Message Transfer Agent.\n")],
    )
    assert [e.id for e in read_dictd(index_path, dict_path)] == ["MTA", "MTA (2)"]


def test_read_dictd_names_the_bad_line(tmp_path: Path) -> None:
    index_path, dict_path = _write_dictd(tmp_path, [(["x"], "x\n\n   y\n")])
    index_path.write_text("x\tA\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"test\.index:1: expected 'headword<TAB>offset<TAB>length'"):
        read_dictd(index_path, dict_path)
    index_path.write_text("x\tA\tZZZ\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"points past the end of .*are the two files from one database"):
        read_dictd(index_path, dict_path)
    index_path.write_text("x\tA\tB=\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"test\.index:1: .*the line is"):
        read_dictd(index_path, dict_path)


def test_missing_foldoc_names_the_apt_package(tmp_path: Path) -> None:
    with pytest.raises(CorpusNotFoundError) as info:
        load_foldoc(tmp_path)
    message = str(info.value)
    assert "apt-get install -y dict-foldoc" in message
    assert str(tmp_path / "foldoc.index") in message


# -- the real corpus -----------------------------------------------------------------------------


def test_foldoc_is_the_real_dictionary(foldoc: list[DictEntry], foldoc_by_id: dict[str, DictEntry]) -> None:
    # dict-foldoc 20230119 has 15,247 headwords for 12,014 distinct definitions; later
    # releases only grow.
    assert len(foldoc) > 11_000
    assert sum(len(e.headwords) for e in foldoc) > 15_000
    assert len(foldoc_by_id) == len(foldoc), "ids are unique"
    compiler = foldoc_by_id["compiler"].text
    assert compiler.startswith("compiler\n\n<programming, tool> A program that converts another program")
    assert "{source language}" in compiler
    assert foldoc_by_id["Unix"].headwords == ("unix",)
    dollar = next(e for e in foldoc if "$" in e.headwords)
    assert {"$", "dollar", "&#36;"} <= set(dollar.headwords)
    assert not any(h.startswith("00-database") for e in foldoc for h in e.headwords)
