"""Publishers of the Brown corpus samples, parsed from the package's ``CONTENTS``.

Used only by ``scripts/make_brown_data.py`` (the result is shipped in the
derived data file; loading the corpus does not parse anything).

``CONTENTS`` gives every sample an entry ``A07. The New York Times, June 19,
1961, p.1`` followed by tab-indented lines (a periodical line, an imprint, the
permission line, sub-parts ``A. ... B. ...``, notes) that end with the line
``2,035 words ...``. Entries span lines and have three shapes; the
**publication** of a sample is taken, in this order, from:

1. a book imprint ``Place: Publisher, 19xx`` in the citation (the entry text
   before its permission line and sub-parts): the book publisher
   (``New York: Harper & Brothers, 1961`` → ``Harper & Brothers``);
2. else, when the citation quotes an article title, the periodical named right
   after the last closing quote (``"A Family Affair" Commonweal (Nov...`` →
   ``Commonweal``);
3. else the header itself names the newspaper or magazine: its text up to the
   first ``,``, ``(`` or ``[`` (``The Times-Picayune, [New Orleans], ...`` →
   ``The Times-Picayune``).

Entries the rules get wrong (government documents of genre H, pamphlets,
corporate reports, stories reprinted in anthologies, a mismatched quote) are
fixed by hand in ``OVERRIDES`` (sample id → publisher, as printed in CONTENTS
or the issuing body). A sample that quotes several publications (``A02``:
Dallas Morning News and, for its last part, Chicago Daily Tribune) gets the
first one named.

**Normalisation** (one publisher, one id): HTML entities are unescaped;
``&`` reads ``and``; a trailing ``, Inc.``, ``Inc.``, ``Corp.``,
``Corporation`` (only after a comma) and a trailing period are dropped;
``Co.`` reads ``Company``; a leading ``The`` is dropped; ``ALIASES`` then maps
spelling variants and renamings of one firm or paper to one name (``Time
magazine`` → ``Time``, ``Rocky Mountains News`` → ``Rocky Mountain News``,
``The New York Times Magazine`` → ``New York Times``, ``Harcourt, Brace & Co.``
→ ``Harcourt, Brace & World``, renamed in 1960). The **id** is the normalised
name lowercased with every run of non-alphanumerics replaced by ``-``
(``new-york-times``); the **display name** is the normalised name
(``New York Times``, ``Harper and Brothers``). Different magazines of one
company stay different publications (``Life``, ``Time``, ``Sports
Illustrated``): the level is the publication, as CONTENTS names it.
"""

from __future__ import annotations

import html
import re

GENRES: list[tuple[str, str]] = [
    ("a", "Press: reportage"),
    ("b", "Press: editorial"),
    ("c", "Press: reviews"),
    ("d", "Religion"),
    ("e", "Skills and hobbies"),
    ("f", "Popular lore"),
    ("g", "Belles-lettres"),
    ("h", "Miscellaneous: government and house organs"),
    ("j", "Learned"),
    ("k", "Fiction: general"),
    ("l", "Fiction: mystery"),
    ("m", "Fiction: science"),
    ("n", "Fiction: adventure"),
    ("p", "Fiction: romance"),
    ("r", "Humour"),
]

# sample id -> publisher (before normalisation), where the three rules fail.
OVERRIDES: dict[str, str] = {
    "ch01": "U.S. Department of Commerce",
    "ch02": "U.S. Department of State",
    "ch03": "U.S. Congress",
    "ch04": "Rhode Island Legislative Council",
    "ch05": "Rhode Island Legislative Council",
    "ch06": "Rhode Island Development Council",
    "ch07": "Rhode Island Legislative Council",
    "ch08": "State of Rhode Island",
    "ch09": "U.S. Congress",
    "ch10": "U.S. Department of Defense",
    "ch11": "U.S. Department of Commerce",
    "ch12": "U.S. Congress",
    "ch13": "U.S. Congress",
    "ch14": "U.S. Department of Health, Education and Welfare",
    "ch15": "Office of Civil and Defense Mobilization",
    "ch16": "U.S. Supreme Court",
    "ch17": "U.S. Supreme Court",
    "ch18": "U.S. Department of State",
    "ch19": "Peace Corps",
    "ch20": "U.S. Department of Agriculture",
    "ch21": "Office of the Federal Register",
    "ch22": "U.S. Department of State",
    "ch23": "Federal Communications Commission",
    "ch24": "U.S. Treasury Department",
    "ch25": "John Simon Guggenheim Memorial Foundation",
    "ch26": "Brown & Sharpe",
    "ch27": "Leesona Corporation",
    "ch28": "Carleton College",
    "ch29": "Sprague Electric Company",
    "ch30": "Carnegie Foundation for the Advancement of Teaching",
    "cd06": "American Tract Society",
    "cd16": "Herald Press",
    "cg10": "Freedom and Union",
    "cg53": "J. B. Lippincott Company",
    "cg49": "Thomas Nelson & Sons",
    "cl20": "Manhunt",
    "cm03": "Avon Books",
    "cn10": "Avon Books",
    "cd07": "Christian Reformed Church",
    "cd11": "Duke University Press",
    "cf13": "U.S. Department of Agriculture",
    "cf34": "U.S. Department of Agriculture",
    "cf38": "Holt, Rinehart and Winston",
    "cg50": "Bobbs-Merrill Company",
    "cg61": "University of Wisconsin",
    "cj13": "Society for Research in Child Development",
    "cj24": "Columbia University Press",
    "cj30": "Free Press of Glencoe",
    "cj49": "National Society for the Study of Education",
    "cj69": "IBM",
    "cj73": "National Academy of Sciences",
    "cj78": "National Aeronautics and Space Administration",
    "cl19": "William Morrow and Company",
    "cm05": "The Year's Best S-F",
    "cm06": "The Year's Best S-F",
    "cg09": "Criticism",
}

# normalised name -> canonical name (spelling variants, renamings).
ALIASES: dict[str, str] = {
    "Time magazine": "Time",
    "Rocky Mountains News": "Rocky Mountain News",
    "New York Times Magazine": "New York Times",
    "Harcourt, Brace and Company": "Harcourt, Brace and World",
    "Horizon: A Magazine of the Arts": "Horizon",
    "Macmillian Company": "Macmillan Company",
    "Eectronics World": "Electronics World",
    "U.S.Camera": "U.S. Camera",
    "Elsevir Publishing Company": "Elsevier Publishing Company",
    "Coward McCann": "Coward-McCann",
    "Sun": "Sun (Baltimore)",
    "W.W. Norton and Company": "W. W. Norton and Company",
}

_HEADER = re.compile(r"^\s*([A-R])(\d\d)[.:]\s*(.*)$")
_STOP = re.compile(
    r"^\s*(?:[A-H]\.\s|Used by|Copyright|Reprinted|Reproduced|Arbitrary|Typographical|Note|"
    r"Typographic|[\d,.]+ words?\b)",
    re.IGNORECASE,
)
_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_IMPRINT = re.compile(r":\s*(?!(?:" + _MONTHS + r")\b)([A-Z][^:()\"\[\]]*?),?\s*(?:19[56]\d)")


def entries(contents: str) -> dict[str, list[str]]:
    """Sample id (``ca07``) -> the entry's raw lines (header first, up to and
    including the ``N words`` line or the next header)."""
    out: dict[str, list[str]] = {}
    cur: list[str] | None = None
    for line in contents.splitlines():
        m = _HEADER.match(line)
        if m:
            cur = [line]
            out[f"c{m.group(1).lower()}{m.group(2)}"] = cur
        elif cur is not None:
            cur.append(line)
            if re.match(r"^\s*[\d,.]+ words?\b", line) or line.startswith("<hr>"):
                cur = None
    return out


def citation(lines: list[str]) -> str:
    """The entry's bibliographic part, one line: the header (without its id)
    and the following lines before the permission, sub-part or note lines;
    HTML entities unescaped, line ranges ``0010-1890`` removed."""
    m = _HEADER.match(lines[0])
    parts = [m.group(3)]
    for line in lines[1:]:
        if _STOP.match(line):
            break
        parts.append(line)
    text = html.unescape(" ".join(p.strip() for p in parts if p.strip()))
    text = re.sub(r"\s*\b\d{4}-\d{4}\b\s*$", "", text)
    text = re.sub(r"\s+(Used by|Copyright|Reprinted).*$", "", text)
    return re.sub(r"\s+", " ", text).strip()


def raw_publisher(sid: str, cit: str) -> str:
    """The publication of one sample, before normalisation (rules 1-3)."""
    if sid in OVERRIDES:
        return OVERRIDES[sid]
    m = _IMPRINT.search(cit)
    if m:
        return m.group(1)
    if '"' in cit:
        tail = re.split(r",|\(|\[|\s\d", cit[cit.rindex('"') + 1 :].lstrip(" ,"))[0]
        if tail.strip():
            return tail
    return re.split(r",|\(|\[", cit)[0]


def normalise(name: str) -> str:
    """Display name of a publisher (see the module docstring)."""
    s = html.unescape(name).strip()
    s = re.sub(r"\s+", " ", s).replace("&", "and")
    for _ in range(3):
        s = re.sub(r"(?:,?\s*Inc\.?|,\s*Corp\.?|,\s*Corporation)$", "", s).strip()
        s = s.rstrip(" .,")
    s = re.sub(r"\bCo\.?$", "Company", s)
    s = re.sub(r"\bCo\.(?=\s|,|$)", "Company", s)
    s = re.sub(r"^The\s+", "", s)
    s = re.sub(r"\s*-\s*", "-", s)
    return ALIASES.get(s, s)


def publisher_id(display: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", display.lower()).strip("-")


def publishers(contents: str) -> dict[str, dict[str, str]]:
    """Sample id -> ``{"citation", "publisher_id", "publisher"}`` for all 500."""
    out = {}
    for sid, lines in entries(contents).items():
        cit = citation(lines)
        name = normalise(raw_publisher(sid, cit))
        out[sid] = {"citation": cit, "publisher_id": publisher_id(name), "publisher": name}
    return out
