"""Real, offline corpora for retrieval tests, benchmarks and demos.

FOLDOC (the Free On-line Dictionary of Computing) comes from Debian's ``dict-foldoc`` package as
a dictd database: ``foldoc.index`` (one line per headword: ``headword<TAB>offset<TAB>length``,
offset and length as base-64 numbers) and ``foldoc.dict.dz`` (the entries' text, compressed with
dictzip, which is gzip with a seek table, so plain ``gzip`` reads it). Several headwords may
point at the same stretch of text (aliases such as ``$`` and ``dollar``); each stretch is one
``DictEntry``. The entry's text begins with its headword lines as the dictionary prints them, a
blank line, and then the definition.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FOLDOC_APT_PACKAGE",
    "CorpusNotFoundError",
    "DictEntry",
    "decode_dictd_number",
    "load_foldoc",
    "read_dictd",
]

FOLDOC_APT_PACKAGE = "dict-foldoc"
_DICTD_DIR = Path("/usr/share/dictd")

# dictd writes offsets and lengths as big-endian base-64 numbers in this alphabet
# (dictd's b64_encode; note: not RFC 4648 padding, just positional digits).
_B64_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64_DIGITS)}

# dictd keeps the database's own metadata (name, URL, charset) as pseudo-entries whose
# headwords start with this prefix; they are not dictionary content.
_METADATA_PREFIX = "00-database-"


class CorpusNotFoundError(FileNotFoundError):
    """The corpus files are not on this machine; the message names the package that provides them."""


@dataclass(frozen=True)
class DictEntry:
    """One dictionary definition.

    ``id`` is its first headword as the dictionary prints it (``"Unix"``), unique within a
    database; ``headwords`` are all the index's (lower-cased) names that lead to it; ``text``
    is the whole entry, headword lines included, without dictfmt's three-space indent.
    """

    id: str
    headwords: tuple[str, ...]
    text: str


def decode_dictd_number(digits: str) -> int:
    """Decode one offset or length field of a dictd ``.index`` file."""
    if not digits:
        raise ValueError("empty dictd number")
    value = 0
    for char in digits:
        try:
            value = value * 64 + _B64_VALUE[char]
        except KeyError:
            raise ValueError(f"{digits!r} is not a dictd base-64 number (bad digit {char!r})") from None
    return value


def read_dictd(index_path: str | os.PathLike[str], dict_path: str | os.PathLike[str]) -> list[DictEntry]:
    """Parse a dictd database into entries, in the order of their text in the ``.dict`` file.

    ``dict_path`` may be dictzip-compressed (``.dict.dz``) or plain (``.dict``).
    """
    index_path, dict_path = Path(index_path), Path(dict_path)
    opener = gzip.open if dict_path.suffix == ".dz" else open
    with opener(dict_path, "rb") as f:
        data = f.read()

    # Group headwords by the stretch of text they point at, keeping first-seen order.
    spans: dict[tuple[int, int], list[str]] = {}
    with open(index_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) < 3:
                raise ValueError(
                    f"{index_path}:{lineno}: expected 'headword<TAB>offset<TAB>length', got {line!r}"
                )
            headword, offset, length = fields[0], fields[1], fields[2]
            if headword.startswith(_METADATA_PREFIX):
                continue
            try:
                span = (decode_dictd_number(offset), decode_dictd_number(length))
            except ValueError as exc:
                raise ValueError(f"{index_path}:{lineno}: {exc}; the line is {line!r}") from None
            if span[0] + span[1] > len(data):
                raise ValueError(
                    f"{index_path}:{lineno}: {headword!r} points past the end of {dict_path} "
                    f"({span[0]}+{span[1]} > {len(data)} bytes); are the two files from one database?"
                )
            spans.setdefault(span, []).append(headword)

    entries: list[DictEntry] = []
    seen_ids: dict[str, int] = {}
    for (offset, length), headwords in sorted(spans.items()):
        text = _unindent(data[offset : offset + length].decode("utf-8")).strip()
        entry_id = text.split("\n", 1)[0].strip() or headwords[0]
        # Two entries may print the same first headword; ids must stay unique for an index.
        count = seen_ids.get(entry_id, 0)
        seen_ids[entry_id] = count + 1
        if count:
            entry_id = f"{entry_id} ({count + 1})"
        entries.append(DictEntry(id=entry_id, headwords=tuple(headwords), text=text))
    return entries


def _unindent(text: str) -> str:
    # dictfmt indents every definition line by three spaces (headword lines are not indented);
    # textwrap.dedent would keep them, because the headword lines share no indentation.
    return "\n".join(line.removeprefix("   ") for line in text.split("\n"))


def load_foldoc(directory: str | os.PathLike[str] | None = None) -> list[DictEntry]:
    """The FOLDOC dictionary from Debian's ``dict-foldoc`` package (about 12,000 definitions).

    ``directory`` defaults to ``/usr/share/dictd``, where the package installs it.
    """
    base = Path(directory) if directory is not None else _DICTD_DIR
    index_path, dict_path = base / "foldoc.index", base / "foldoc.dict.dz"
    if not dict_path.exists():
        plain = base / "foldoc.dict"
        dict_path = plain if plain.exists() else dict_path
    missing = [str(p) for p in (index_path, dict_path) if not p.exists()]
    if missing:
        raise CorpusNotFoundError(
            f"FOLDOC is not installed: missing {', '.join(missing)}.\n"
            f"It comes from the Debian package '{FOLDOC_APT_PACKAGE}':\n"
            f"    apt-get update && apt-get install -y {FOLDOC_APT_PACKAGE}\n"
            "or pass load_foldoc(directory=...) where foldoc.index and foldoc.dict.dz are."
        )
    return read_dictd(index_path, dict_path)
