"""The zh_Hans catalogue translates every message: an untranslated or fuzzy entry would show
English (or a stale guess) to Chinese-speaking admins without anyone noticing.

A small in-process reader of the PO format keeps this check in the fast lane; a slow test
holds it to gettext's own `msgattrib`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CATALOGUE = Path(__file__).resolve().parent.parent / "locale/zh_Hans/LC_MESSAGES/django.po"

_KEYWORD = re.compile(r'^(msgctxt|msgid|msgid_plural|msgstr(?:\[\d+\])?)\s+"(.*)"\s*$')
_CONTINUATION = re.compile(r'^"(.*)"\s*$')


@dataclass
class Entry:
    line: int
    flags: set[str] = field(default_factory=set)
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def msgid(self) -> str:
        return self.fields.get("msgid", "")

    @property
    def key(self) -> tuple[str | None, str]:
        return self.fields.get("msgctxt"), self.msgid

    @property
    def untranslated(self) -> bool:
        if self.msgid == "":  # the header
            return False
        forms = [value for name, value in self.fields.items() if name.startswith("msgstr")]
        return not forms or any(form == "" for form in forms)


def catalogue_entries(text: str) -> list[Entry]:
    """Entries of a PO file (obsolete `#~` ones left out), strings kept escaped as written."""
    entries: list[Entry] = []
    entry: Entry | None = None
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#~"):
            if not line:
                entry, current = None, None
            continue
        if line.startswith("#"):
            if entry is not None and entry.fields:
                entry, current = None, None
            if entry is None:
                entry = Entry(line=number)
                entries.append(entry)
            if line.startswith("#,"):
                entry.flags.update(flag.strip() for flag in line[2:].split(","))
            continue
        keyword = _KEYWORD.match(line)
        if keyword:
            name, value = keyword.groups()
            if entry is None or (name in {"msgctxt", "msgid"} and "msgid" in entry.fields):
                entry = Entry(line=number)
                entries.append(entry)
            entry.fields[name] = value
            current = name
            continue
        continuation = _CONTINUATION.match(line)
        if continuation and entry is not None and current is not None:
            entry.fields[current] += continuation.group(1)
            continue
        raise ValueError(f"line {number}: not PO syntax: {raw!r}")
    return entries


def catalogue_gaps(text: str) -> tuple[list[Entry], list[Entry]]:
    """(untranslated, fuzzy) entries of a PO file; a fuzzy header counts (msgfmt drops it)."""
    entries = catalogue_entries(text)
    return (
        [entry for entry in entries if entry.untranslated],
        [entry for entry in entries if "fuzzy" in entry.flags],
    )


def _describe(entries: list[Entry]) -> list[str]:
    return [f"line {entry.line}: {entry.msgid[:80]!r}" for entry in entries]


def test_zh_hans_catalogue_has_no_untranslated_or_fuzzy_entry() -> None:
    untranslated, fuzzy = catalogue_gaps(CATALOGUE.read_text(encoding="utf-8"))

    assert _describe(untranslated) == [], "translate these in django.po"
    assert _describe(fuzzy) == [], "review these and drop their `#, fuzzy` flag"


# A catalogue with every kind of gap, and translated entries written in the shapes that a
# naive reader mistakes for gaps (msgstr "" followed by continuation lines, plurals).
SAMPLE = r"""# header comment
#, fuzzy
msgid ""
msgstr ""
"Language: zh_Hans\n"

#: apps/a.py:1
msgid "Translated"
msgstr "已翻译"

#: apps/a.py:2
msgid ""
"Long message "
"on two lines"
msgstr ""
"长消息"
"分两行"

#: apps/a.py:3
msgid "Forgotten"
msgstr ""

#: apps/a.py:4
#, fuzzy, python-format
#| msgid "Old %(name)s"
msgid "Guessed %(name)s"
msgstr "猜测 %(name)s"

msgctxt "button"
msgid "Open"
msgstr "打开"

msgid "%(count)d file"
msgid_plural "%(count)d files"
msgstr[0] "%(count)d 个文件"

msgid "%(count)d row"
msgid_plural "%(count)d rows"
msgstr[0] ""

#, python-format
msgid "Escaped \"quote\" and %(x)s"
msgstr "转义的\"引号\"和 %(x)s"
msgid "No blank line before me"
msgstr ""

#~ msgid "Obsolete"
#~ msgstr ""
"""


def test_the_check_finds_each_kind_of_gap_and_nothing_else() -> None:
    untranslated, fuzzy = catalogue_gaps(SAMPLE)

    assert [entry.msgid for entry in untranslated] == [
        "Forgotten",
        "%(count)d row",
        "No blank line before me",
    ]
    assert [entry.msgid for entry in fuzzy] == ["", "Guessed %(name)s"]
    assert [entry.key for entry in catalogue_entries(SAMPLE)][4:6] == [
        (None, "Guessed %(name)s"),
        ("button", "Open"),
    ]


def test_text_that_is_not_po_is_an_error_not_a_clean_catalogue() -> None:
    with pytest.raises(ValueError, match="line 2"):
        catalogue_entries('msgid "a"\nmsgstr = "b"\n')


@pytest.mark.slow  # runs gettext's msgattrib
@pytest.mark.parametrize("source", ["sample", "catalogue"])
def test_the_check_agrees_with_msgattrib(source: str, tmp_path: Path) -> None:
    if shutil.which("msgattrib") is None:
        pytest.fail("gettext's msgattrib is missing (make needs gettext to compile messages)")
    path = CATALOGUE
    if source == "sample":
        path = tmp_path / "sample.po"
        path.write_text(SAMPLE, encoding="utf-8")
    untranslated, fuzzy = catalogue_gaps(path.read_text(encoding="utf-8"))

    def msgattrib(option: str) -> set[tuple[str | None, str]]:
        result = subprocess.run(
            ["msgattrib", option, "--no-obsolete", "--no-wrap", str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        return {entry.key for entry in catalogue_entries(result.stdout) if entry.msgid}

    assert {entry.key for entry in untranslated} == msgattrib("--untranslated")
    assert {entry.key for entry in fuzzy if entry.msgid} == msgattrib("--only-fuzzy")
