"""One DICOM matching engine for the studies page, QIDO-RS and C-FIND (PS3.4 C.2.2.2).

Each door turns its own request (a form, query parameters, an identifier) into calls here, so that the
same question gets the same answer from the web page, from OHIF and from a modality:

- universal matching: an empty value, or a lone ``*`` (whatever the VR: a date, a time, a UID, a
  number), filters nothing (``is_universal``);
- single value: exact, case-sensitive, except person names, which ignore case;
- wildcards ``*`` (any run) and ``?`` (one character) on every string attribute, translated to SQL
  ``LIKE`` with the other characters escaped. LIKE runs in time linear in the value on PostgreSQL and
  SQLite alike (a regular expression with ``.*`` runs backtrack exponentially), and its literal prefix
  uses a B-tree index, its inner literals a trigram index (PostgreSQL);
- ranges of dates and times (``A-B``, ``-B``, ``A-``): a lone ``-`` and a range that ends before it starts
  are refused; a partial time covers its whole span (``10`` is 10:00:00 to 10:59:59.999999), also as a
  range's end;
- person names with several component groups (``Alphabetic=Ideographic=Phonetic``): the value matches
  when any group does;
- lists of UIDs (backslash- or comma-separated) and multi-valued codes (``ModalitiesInStudy``, stored
  ``CT\\MR``): a match of any value.

Values read from a stored header (C-FIND keys we do not index) go through ``header_match``, which
follows the same rules in Python with a linear wildcard matcher.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, time
from http import HTTPStatus
from time import monotonic
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import CharField, F, Func, Lookup, Q, QuerySet, TextField, Transform, Value
from django.db.models.expressions import Col
from django.db.models.functions import Upper
from django.db.models.sql.compiler import SQLCompiler

from portal.exceptions import PortalError
from studies.models import Patient
from tenants.models import Clinic

# The widest integer the index columns hold (IS is a 32-bit signed value, PS3.5 6.2).
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
_LIKE_SPECIAL = re.compile(r"([\\%_])")
# PostgreSQL's cost of one operator or function call inside a search (see search_budget). At 0.02, once the
# date index carried the name (migration 0026), PostgreSQL checked 'mary' on 20,000 of its entries (7-9 ms)
# rather than read 1,001 names from the name indexes (540 buffers, 1-3 ms) at 100,000 studies.
SEARCH_OPERATOR_COST = 0.05
# Up to this many patients matching a search's patient keys are looked up by id (see patients_narrow).
PATIENT_IDS_MAX = 1000


class MatchInvalid(PortalError):
    """A matching key's value that cannot be understood (a bad date, an inverted range, ...)."""

    code = "invalid_query"


class SearchTooSlow(PortalError):
    """The search ran past its time budget (``SEARCH_TIME_LIMIT_SECONDS``) and was stopped."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "search_too_slow"


# SQLite's trigram full-text indexes (migration 0024), by the (table, column) whose UPPER(...) they serve.
SQLITE_TRIGRAM_INDEXES = {("studies_study", "patient_name"): "study_name_fts"}
# PostgreSQL's covering prefix indexes (migration 0027), by the (table, column) whose UPPER(...) they serve.
POSTGRESQL_PREFIX_INDEXES = {("studies_study", "patient_name")}


class DicomLike(Lookup):
    """``column LIKE pattern`` with backslash escapes (the pattern comes from ``like_pattern``)."""

    lookup_name = "dicom_like"

    def as_sql(self, compiler: SQLCompiler, conn: BaseDatabaseWrapper) -> tuple[str, tuple[str | int, ...]]:
        lhs, lhs_params = self.process_lhs(compiler, conn)
        rhs, rhs_params = self.process_rhs(compiler, conn)
        if conn.vendor == "postgresql":
            prefixed = self._prefix_cover(compiler, conn, lhs, tuple(lhs_params), rhs, tuple(rhs_params))
            if prefixed is not None:
                return prefixed
        if conn.vendor != "sqlite":
            return f"{lhs} LIKE {rhs}", (*lhs_params, *rhs_params)
        # PostgreSQL's LIKE escapes with a backslash by default; SQLite needs to be told.
        sql, params = _sqlite_like(self, compiler, conn, rhs, tuple(rhs_params))
        candidates = self._trigram_candidates(conn)
        if candidates is None:
            return sql, params
        return f"({sql} AND {candidates[0]})", (*params, candidates[1])

    def _prefix_cover(
        self,
        compiler: SQLCompiler,
        conn: BaseDatabaseWrapper,
        lhs: str,
        lhs_params: tuple[Any, ...],
        rhs: str,
        rhs_params: tuple[Any, ...],
    ) -> tuple[str, tuple[Any, ...]] | None:
        """On PostgreSQL, a pattern with a literal start as a range of its covering prefix index (0027).

        Only over a column with such an index, and only where the range is the better read: a start of
        three characters or more, or a pattern with no other run of three for the trigram index. The LIKE
        still decides, inside ``IS TRUE`` (the same for a column that is never NULL): PostgreSQL priced
        the trigram index of a bare LIKE as nearly free and took it, and for ``JOHN*^MI*`` its posting
        lists of common trigrams (`` jo``, `` mi``) cost 16 ms at 100,000 studies where the covering
        index's entries, read alone, cost 1 ms. ``name <> ''`` (true of any name a literal start matches)
        is that index's condition, so that no other search reads it whole (with the name in the prefix
        index, a search for ``smi`` walked all of it in name order: 293 ms at 1,000,000 studies).
        """
        column = getattr(self.lhs, "lhs", None)
        pattern = self.rhs
        if not isinstance(self.lhs, Upper) or not isinstance(column, Col) or not isinstance(pattern, str):
            return None
        if (
            not column.alias
            or (column.target.model._meta.db_table, str(column.target.column)) not in POSTGRESQL_PREFIX_INDEXES
        ):
            return None
        prefix, rest = _like_prefix(pattern)
        if not prefix or (len(prefix) < 3 and any(len(run) >= 3 for run in _like_literal_runs(rest))):
            return None
        # Compiled as the lookup's own column is (a subquery's alias, U0, is not quoted).
        name, name_params = compiler.compile(column)
        sql, params = f"{lhs} ~>=~ %s", (*lhs_params, prefix)
        # Bytewise, as text_pattern_ops compares (UTF-8 keeps code point order): below the prefix with its
        # last character stepped on, when there is such a character.
        last = ord(prefix[-1]) + 1
        if last <= 0x10FFFF and not 0xD800 <= last <= 0xDFFF:
            sql, params = f"{sql} AND {lhs} ~<~ %s", (*params, *lhs_params, prefix[:-1] + chr(last))
        params = (*params, *name_params, *lhs_params, *rhs_params)
        return f"({sql} AND {name} <> '' AND ({lhs} LIKE {rhs}) IS TRUE)", params

    def _trigram_candidates(self, conn: BaseDatabaseWrapper) -> tuple[str, str] | None:
        """On SQLite, the rows whose value holds the pattern's literal runs, from a trigram index.

        Only for a pattern that starts with a wildcard (a literal prefix has its B-tree range) over a
        column with such an index, and only with a run of three characters or more (a trigram).
        """
        column = getattr(self.lhs, "lhs", None)
        pattern = self.rhs
        if not isinstance(self.lhs, Upper) or not isinstance(column, Col) or not isinstance(pattern, str):
            return None
        model = column.target.model
        index = SQLITE_TRIGRAM_INDEXES.get((model._meta.db_table, str(column.target.column)))
        if index is None or not pattern.startswith(("%", "_")) or not column.alias:
            return None
        runs = [run for run in _like_literal_runs(pattern) if len(run) >= 3]
        if not runs:
            return None
        # Each run as an FTS5 string (double quotes doubled): rows holding all of them, in any case.
        match = " ".join('"' + run.replace('"', '""') + '"' for run in runs)
        quote = conn.ops.quote_name
        rowid = f"{quote(column.alias)}.{quote(str(model._meta.pk.column if model._meta.pk else 'id'))}"
        return f"{rowid} IN (SELECT rowid FROM {index} WHERE {index} MATCH %s)", match


class Holds(Lookup):
    """``column`` holds the text somewhere, case-sensitively (``INSTR`` on SQLite, ``STRPOS`` elsewhere)."""

    lookup_name = "holds"

    def as_sql(self, compiler: SQLCompiler, conn: BaseDatabaseWrapper) -> tuple[str, tuple[str | int, ...]]:
        lhs, lhs_params = self.process_lhs(compiler, conn)
        rhs, rhs_params = self.process_rhs(compiler, conn)
        function = "INSTR" if conn.vendor == "sqlite" else "STRPOS"
        return f"{function}({lhs}, {rhs}) > 0", (*lhs_params, *rhs_params)


class DicomLikeCandidates(DicomLike):
    """``dicom_like`` for a condition that only finds candidates, implied by others that decide.

    The same SQL, so that an index serves it; ``rows_match`` leaves it out of a walk in index order, where
    the deciding conditions alone check each row.
    """

    lookup_name = "dicom_like_candidates"


class _DicomLikeRowCheck(DicomLike):
    """``dicom_like`` as a plain check of each row: SQLite's bare LIKE, PostgreSQL's ``postgresql_sql``."""

    postgresql_sql = "{lhs} LIKE {rhs}"

    def as_sql(self, compiler: SQLCompiler, conn: BaseDatabaseWrapper) -> tuple[str, tuple[str | int, ...]]:
        lhs, lhs_params = self.process_lhs(compiler, conn)
        rhs, rhs_params = self.process_rhs(compiler, conn)
        if conn.vendor == "sqlite":
            return _sqlite_like(self, compiler, conn, rhs, tuple(rhs_params))
        return self.postgresql_sql.format(lhs=lhs, rhs=rhs), (*lhs_params, *rhs_params)


class DicomLikeChecked(_DicomLikeRowCheck):
    """``dicom_like`` that only checks rows another condition found (no index of its own is offered).

    For the arms of a condition whose index read is already spelled once (``person_name_q``): on
    PostgreSQL the LIKE sits inside ``IS TRUE``, which no index serves, and on SQLite it asks the trigram
    index for no candidates.
    """

    lookup_name = "dicom_like_checked"
    postgresql_sql = "({lhs} LIKE {rhs}) IS TRUE"


class DicomLikeWalk(_DicomLikeRowCheck):
    """``dicom_like`` as checked in a walk of the date order (``rows_match``): a bare LIKE on every vendor.

    No trigram candidates (SQLite) and no prefix index's range (PostgreSQL): the walk checks each row it
    passes. PostgreSQL estimates a bare LIKE from the name's statistics; the range and ``IS TRUE`` it
    guessed at 80 of the 3,300 studies of ``SMI*`` and sorted them all from the prefix index instead of
    walking (3,900 buffers, against 640).
    """

    lookup_name = "dicom_like_walk"


def _sqlite_like(
    lookup: Lookup, compiler: SQLCompiler, conn: BaseDatabaseWrapper, rhs: str, rhs_params: tuple[Any, ...]
) -> tuple[str, tuple[Any, ...]]:
    """SQLite's ``LIKE`` of a lookup, over the column itself where the lookup compares UPPER(column), and
    its ``GLOB`` where the lookup keeps case.

    SQLite's LIKE ignores the case of ASCII letters and its UPPER() changes nothing else, so both give the
    same answer, and UPPER cost half of each check (a name checked row by row in a walk of the date order,
    the page's count of up to 1,001 descriptions: 12,000 rows for 'brain' at 100,000 studies).
    """
    column = getattr(lookup.lhs, "lhs", None)
    ignores_case = isinstance(lookup.lhs, Upper)
    target = column if ignores_case and isinstance(column, Col) else lookup.lhs
    lhs, lhs_params = compiler.compile(target)
    if not ignores_case and len(rhs_params) == 1 and isinstance(rhs_params[0], str):
        # A match that keeps case (every attribute but names, PS3.4 C.2.2.2.4) is a GLOB: SQLite's LIKE
        # would ignore ASCII case where PostgreSQL's does not.
        return f"{lhs} GLOB {rhs}", (*lhs_params, glob_pattern(rhs_params[0]))
    return f"{lhs} LIKE {rhs} ESCAPE '\\'", (*lhs_params, *rhs_params)


def glob_pattern(like: str) -> str:
    """A LIKE pattern of ``like_pattern`` (backslash escapes) as the SQLite GLOB pattern that matches the same."""
    out, escaped = [], False
    for char in like:
        if char == "\\" and not escaped:
            escaped = True
            continue
        if char in "%_" and not escaped:
            out.append("*" if char == "%" else "?")
        else:
            out.append(f"[{char}]" if char in "*?[" else char)  # GLOB's own specials, as literals
        escaped = False
    return "".join(out)


def _like_prefix(pattern: str) -> tuple[str, str]:
    """A LIKE pattern's literal start (escapes resolved) and the pattern after it."""
    prefix, escaped = [], False
    for position, char in enumerate(pattern):
        if escaped:
            prefix.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "%_":
            return "".join(prefix), pattern[position:]
        else:
            prefix.append(char)
    return "".join(prefix), ""


def _like_literal_runs(pattern: str) -> list[str]:
    """The runs of literal characters of a LIKE pattern (backslash escapes, ``%`` and ``_`` split)."""
    runs, current, escaped = [], [], False
    for char in pattern:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "%_":
            runs.append("".join(current))
            current = []
        else:
            current.append(char)
    runs.append("".join(current))
    return [run for run in runs if run]


class UnicodeUpper(Transform):
    """``UPPER(column)`` that folds every letter, not only ASCII: SQLite's ``unicode_upper`` (Python's).

    SQLite's UPPER() and LIKE fold ASCII letters only, so ``Müller`` was not ``MÜLLER`` there. Used only
    for a pattern that is not ASCII (``upper_path``): an ASCII one keeps UPPER and its expression indexes.
    PostgreSQL's UPPER already folds by the database's locale: the same UPPER(...) there.
    """

    lookup_name = "unicode_upper"
    function = "UPPER"

    def as_sqlite(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra_context: Any
    ) -> tuple[str, Any]:
        return super().as_sql(compiler, connection, function=SQLITE_UNICODE_UPPER, **extra_context)


# The deterministic SQLite function behind UnicodeUpper, registered on every connection (sqlite_functions_register).
SQLITE_UNICODE_UPPER = "unicode_upper"


def _unicode_upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def sqlite_functions_register(sender: object, connection: BaseDatabaseWrapper, **kwargs: object) -> None:
    """Give a new SQLite connection the functions matching uses (``connection_created``, studies.apps)."""
    if connection.vendor == "sqlite":
        connection.connection.create_function(SQLITE_UNICODE_UPPER, 1, _unicode_upper, deterministic=True)


class DicomLikeTrimmed(Lookup):
    """The value's first component group, its trailing ``^`` removed, ``LIKE`` the pattern (a row check).

    PS3.5 6.2.1: trailing empty components are not significant, so a stored ``DOE^JANE^^^`` is the name
    ``DOE^JANE``. Only checks the rows a ``LIKE 'DOE^JANE^%'`` beside it found through an index.
    """

    lookup_name = "dicom_like_trimmed"

    def as_sql(self, compiler: SQLCompiler, conn: BaseDatabaseWrapper) -> tuple[str, tuple[str | int, ...]]:
        lhs, lhs_params = self.process_lhs(compiler, conn)
        rhs, rhs_params = self.process_rhs(compiler, conn)
        if conn.vendor == "sqlite":
            group = f"SUBSTR({lhs}, 1, INSTR({lhs} || '=', '=') - 1)"
            params = (*lhs_params, *lhs_params, *rhs_params)
            return f"RTRIM({group}, '^') LIKE {rhs} ESCAPE '\\'", params
        return f"(RTRIM(SPLIT_PART({lhs}, '=', 1), '^') LIKE {rhs}) IS TRUE", (*lhs_params, *rhs_params)


for _field in (CharField, TextField):
    _field.register_lookup(DicomLike)
    _field.register_lookup(DicomLikeTrimmed)
    _field.register_lookup(DicomLikeChecked)
    _field.register_lookup(DicomLikeCandidates)
    _field.register_lookup(DicomLikeWalk)
    _field.register_lookup(Holds)
    # ``name__upper__dicom_like``: spelled as the UPPER(...) expression indexes are.
    _field.register_lookup(Upper)
    _field.register_lookup(UnicodeUpper)


def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def like_pattern(pattern: str) -> str:
    """Translate DICOM wildcards to a LIKE pattern; ``%``, ``_`` and ``\\`` stay literal."""
    escaped = _LIKE_SPECIAL.sub(r"\\\1", pattern)
    return escaped.replace("*", "%").replace("?", "_")


def wildcard_match(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """Say whether ``value`` matches the wildcard pattern, in time linear in len(value) * len(pattern).

    Greedy: the literal runs between ``*`` are found leftmost in turn, which is enough for ``*``
    (whatever a later run needs, an earlier leftmost match leaves the most text for it).
    """
    if ignore_case:
        pattern, value = pattern.upper(), value.upper()
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return len(value) == len(pattern) and _run_at(pattern, value, 0)
    first, *middle, last = pieces
    if len(value) < len(first) + len(last) or not _run_at(first, value, 0):
        return False
    position, end = len(first), len(value) - len(last)
    for piece in middle:
        found = _run_find(piece, value, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return position <= end and _run_at(last, value, end)


def _run_at(piece: str, value: str, start: int) -> bool:
    """A run of literals and ``?`` matches value at start."""
    if start + len(piece) > len(value):
        return False
    return all(p == "?" or p == value[start + i] for i, p in enumerate(piece))


def _run_find(piece: str, value: str, start: int, end: int) -> int:
    for position in range(start, end - len(piece) + 1):
        if _run_at(piece, value, position):
            return position
    return -1


# Strings ---------------------------------------------------------------------------------------------


def upper_path(path: str, pattern: str) -> str:
    """``path`` upper-cased for a case-insensitive match with ``pattern``, as the expression indexes are.

    On SQLite a pattern that is not ASCII compares ``unicode_upper(column)`` (UnicodeUpper), since
    SQLite's UPPER leaves ``ü`` as it is; an ASCII pattern keeps UPPER and its indexes.
    """
    if connection.vendor == "sqlite" and not pattern.isascii():
        return f"{path}__unicode_upper"
    return f"{path}__upper"


def text_q(path: str, pattern: str, *, ignore_case: bool = False) -> Q:
    """Single value or wildcard match of one string column."""
    if pattern in ("", "*"):
        return Q()
    ascii_path = path
    if ignore_case:
        pattern = pattern.upper()
        path, ascii_path = upper_path(path, pattern), f"{path}__upper"
    # The literal start, before the first wildcard (and on SQLite's Unicode path, before the first
    # letter that is not ASCII: SQLite's UPPER folds the ASCII ones as Python does, so its index serves).
    prefix = re.split(r"[*?]", pattern, maxsplit=1)[0]
    if path != ascii_path:
        prefix = re.split(r"[^\x00-\x7f]", prefix, maxsplit=1)[0]
    if not has_wildcard(pattern):
        q = Q(**{path: pattern})
        return q & _prefix_range_q(ascii_path, prefix) if path != ascii_path and prefix else q
    q = Q(**{f"{path}__dicom_like": like_pattern(pattern)})
    if prefix:
        q &= _prefix_range_q(ascii_path, prefix)
    return q


def _prefix_range_q(path: str, prefix: str) -> Q:
    """On SQLite, the range of strings starting with ``prefix``, to AND with the LIKE that decides.

    SQLite's LIKE uses no index on an expression (UPPER(name)); the same prefix as a range does. On
    PostgreSQL the pattern operator indexes serve LIKE itself, and a range would follow the collation.
    """
    if connection.vendor != "sqlite":
        return Q()
    return Q(**{f"{path}__gte": prefix, f"{path}__lt": prefix[:-1] + chr(ord(prefix[-1]) + 1)})


def contains_q(path: str, text: str) -> Q:
    """Case-insensitive "contains" (the studies page's description box); wildcards inside allowed."""
    text = text.strip()
    return text_q(path, f"*{text}*", ignore_case=True) if text else Q()


def _non_latin(value: str) -> bool:
    return any(ord(char) > 0x24F for char in value)


def name_trimmed(pattern: str) -> str:
    """A person name without its trailing empty components and groups (``DOE^JANE^^^`` is ``DOE^JANE``)."""
    return "=".join(group.rstrip("^") for group in pattern.split("=")).rstrip("=")


def person_name_q(path: str, pattern: str) -> Q:
    """Match a PN column, ignoring case, against each of its component groups.

    The stored value is ``Alphabetic=Ideographic=Phonetic`` (trailing groups often absent). A pattern
    holding ``=`` is matched against the whole value, groups and all.
    """
    pattern = name_trimmed(pattern.strip())
    if pattern in ("", "*"):
        return Q()
    pattern = pattern.upper()
    upper = upper_path(path, pattern)
    if "=" in pattern:
        return text_q(path, pattern, ignore_case=True) | Q(**{f"{upper}__dicom_like": like_pattern(pattern) + "=%"})
    like = like_pattern(pattern)
    # A stored name with trailing empty components (DOE^JANE^^^) is the same name: its first group with
    # the trailing ^ removed is checked, on the rows the pattern followed by ^ finds (a literal start
    # keeps its index range; after a leading wildcard, the trigram candidates below).
    trimmed = Q(**{f"{upper}__dicom_like_trimmed": like})
    # The alphabetic group: the value alone, or followed by other groups.
    if pattern.startswith(("*", "?")) and not pattern.endswith("*"):
        # A value matching either arm holds a match of the pattern followed by anything: that one condition
        # reads the trigram index once, and the arms check its rows. Each arm on its own read the index
        # again, and the same candidates (``*SON^?ARY``: 2 x 5,000 at 100,000 studies).
        checked = f"{upper}__dicom_like_checked"
        q = Q(**{f"{upper}__dicom_like_candidates": like + "%"}) & (
            Q(**{checked: like}) | Q(**{checked: like + "=%"}) | (Q(**{checked: like + "^%"}) & trimmed)
        )
    else:
        q = text_q(path, pattern, ignore_case=True)
        if not pattern.endswith("*"):
            q |= Q(**{f"{upper}__dicom_like": like + "=%"}) | (text_q(path, pattern + "^*", ignore_case=True) & trimmed)
    # Ideographic and phonetic groups hold non-Latin scripts; looking there only for such a pattern keeps
    # a Latin search on the prefix index (the other arms need the trigram index and cost more).
    if _non_latin(pattern):
        q |= Q(**{f"{upper}__dicom_like": "%=" + like}) | Q(**{f"{upper}__dicom_like": "%=" + like + "=%"})
    return q


def given_name_upper(path: str) -> Func:
    """The upper-cased given name (second PN component), spelled as its PostgreSQL index is."""
    name = F(path)
    if connection.vendor == "postgresql":
        return Upper(Func(name, Value("^"), Value(2), function="SPLIT_PART", output_field=CharField()))
    # SQLite has no SPLIT_PART: what follows the first ^ starts with the given name all the same. The
    # literals are part of the SQL (not parameters) so that SQLite matches it to its expression index.
    return Func(
        name, template="UPPER(SUBSTR(%(expressions)s, INSTR(%(expressions)s, '^') + 1))", output_field=CharField()
    )


def name_words_q(path: str, text: str, *, given_name: str) -> Q:
    """Match a name as people type it on the studies page (``given_name`` names an annotation of
    ``given_name_upper(path)`` on the queryset).

    - with DICOM wildcards or ``^``: a PN pattern (``DOE^J*``), a prefix without wildcards;
    - ``Family, Given`` (the list's form): that family name and a given name starting so;
    - ``Given Family`` or ``Family Given`` (both shown by other software): either order;
    - one word: a family or a given name starting with it (``smi`` and ``john`` find ``SMITH^JOHN``).
    """
    text = " ".join(text.split()).upper()
    if not text:
        return Q()
    if has_wildcard(text) or "^" in text or "=" in text:
        return person_name_q(path, text if has_wildcard(text) else text + "*")
    if "," in text:
        family, _, given = (part.strip() for part in text.partition(","))
        return person_name_q(path, f"{family}^{given}*" if given else f"{family}*")
    words = text.split(" ")
    if len(words) == 1:
        if connection.vendor == "sqlite" and not text.isascii():
            # The annotation's UPPER folded only the ASCII letters: fold the rest (no index serves either way).
            given_q = Q(**{f"{given_name}__unicode_upper__startswith": text})
        else:
            given_q = Q(**{f"{given_name}__startswith": text}) & _prefix_range_q(given_name, text)
        q = text_q(path, text + "*", ignore_case=True) | given_q
        if _non_latin(text):
            q |= person_name_q(path, text + "*") | person_name_q(path, "*^" + text + "*")
        return q
    q = Q()
    # Every split into two runs of words, in both orders: "Mary Ann Smith" is SMITH^MARY ANN.
    for cut in range(1, min(len(words), 4)):
        first, second = " ".join(words[:cut]), " ".join(words[cut:])
        q |= person_name_q(path, f"{second}^{first}*") | person_name_q(path, f"{first}^{second}*")
    return q


def codes_q(path: str, pattern: str) -> Q:
    """Match a backslash-separated multi-value column (``CT\\MR``): some stored value matches."""
    if pattern in ("", "*"):
        return Q()
    like = like_pattern(pattern)
    sep = "\\\\"  # a backslash, escaped for LIKE
    exact = Q(**{path: pattern}) if not has_wildcard(pattern) else Q(**{f"{path}__dicom_like": like})
    q = (
        exact
        | Q(**{f"{path}__dicom_like": like + sep + "%"})
        | Q(**{f"{path}__dicom_like": "%" + sep + like})
        | Q(**{f"{path}__dicom_like": "%" + sep + like + sep + "%"})
    )
    if connection.vendor == "sqlite" and not has_wildcard(pattern):
        # A value holding the code holds its text: INSTR turns most rows away before three LIKEs run on
        # each (the page counts up to 1,001 matches: 10,000 rows checked for MR, 4 times faster so). It
        # compares case as CS values and PostgreSQL do; SQLite's LIKE alone ignored ASCII case.
        q = Q(**{f"{path}__holds": pattern}) & q
    return q


def split_list(value: str) -> list[str]:
    """A value list (PS3.4 C.2.2.2.1): backslash-separated, or comma-separated as QIDO allows."""
    return [item.strip() for item in re.split(r"[\\,]", value) if item.strip()]


def uid_q(path: str, values: list[str]) -> Q:
    uids = [uid for value in values for uid in split_list(value)]
    if not uids or "*" in uids:  # a lone * in the list: universal (is_universal)
        return Q()
    return Q(**{f"{path}__in": uids}) if len(uids) > 1 else Q(**{path: uids[0]})


def int_value(text: str, *, name: str, low: int = INT_MIN, high: int = INT_MAX) -> int:
    """A whole number within [low, high] (the index's column range); MatchInvalid otherwise."""
    text = str(text).strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,19}", text) or not low <= int(text) <= high:
        raise MatchInvalid(f"{name} must be a whole number from {low} to {high}.")
    return int(text)


def int_q(path: str, values: list[str], *, name: str) -> Q:
    numbers = [int_value(v, name=name) for value in values for v in split_list(value)]
    return Q(**{f"{path}__in": numbers}) if numbers else Q()


# Dates and times -------------------------------------------------------------------------------------


def parse_date(text: str) -> date:
    """A DICOM date, YYYYMMDD (the ACR-NEMA form YYYY.MM.DD still appears)."""
    digits = text.strip().replace(".", "")
    if not re.fullmatch(r"[0-9]{8}", digits):
        raise MatchInvalid(f"'{text}' is not a DICOM date (YYYYMMDD).")
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        raise MatchInvalid(f"'{text}' is not a DICOM date (YYYYMMDD).") from None


def parse_time(text: str, *, end: bool = False) -> time:
    """A DICOM time HH[MM[SS[.FFFFFF]]]; a partial time is the start of its span (or its end, ``end``)."""
    value = text.strip().replace(":", "")
    digits, _, fraction = value.partition(".")
    if not re.fullmatch(r"[0-9]{2}|[0-9]{4}|[0-9]{6}", digits) or not re.fullmatch(r"[0-9]{0,6}", fraction):
        raise MatchInvalid(f"'{text}' is not a DICOM time (HHMMSS.FFFFFF).")
    hour = int(digits[0:2])
    minute = int(digits[2:4]) if len(digits) >= 4 else (59 if end else 0)
    second = int(digits[4:6]) if len(digits) >= 6 else (59 if end else 0)
    if fraction:
        micro = int(fraction.ljust(6, "9" if end else "0"))
    else:
        micro = 999999 if end and "." not in value else 0
    try:
        return time(hour, minute, second, micro)
    except ValueError:
        raise MatchInvalid(f"'{text}' is not a DICOM time (HHMMSS.FFFFFF).") from None


def date_bounds(low: date | None, high: date | None) -> None:
    """Refuse a date range that ends before it starts (the page's boxes come here too)."""
    if low is not None and high is not None and low > high:
        raise MatchInvalid("The range starts after it ends.")


def _range(value: str, parse: Callable[..., Any]) -> tuple[Any, Any]:
    """(low, high) of a single value or a range; a single value is a range over its own span."""
    value = value.strip()
    if "-" not in value:
        return parse(value), parse(value, end=True) if parse is parse_time else parse(value)
    low_text, _, high_text = (part.strip() for part in value.partition("-"))
    if not low_text and not high_text:
        raise MatchInvalid("A range needs at least one end.")
    low = parse(low_text) if low_text else None
    high = (parse(high_text, end=True) if parse is parse_time else parse(high_text)) if high_text else None
    if low is not None and high is not None and low > high:
        raise MatchInvalid(f"The range '{value}' starts after it ends.")
    return low, high


def _range_q(path: str, low: Any, high: Any) -> Q:
    if low is not None and high is not None and low == high:
        return Q(**{path: low})
    q = Q()
    if low is not None:
        q &= Q(**{f"{path}__gte": low})
    if high is not None:
        q &= Q(**{f"{path}__lte": high})
    return q


def date_q(path: str, value: str) -> Q:
    return _range_q(path, *_range(value, parse_date)) if value.strip() else Q()


def time_q(path: str, value: str) -> Q:
    return _range_q(path, *_range(value, parse_time)) if value.strip() else Q()


# By VR -----------------------------------------------------------------------------------------------

_INT_VRS = {"IS", "US", "SS", "UL", "SL", "SV", "UV"}


def is_universal(values: list[str]) -> bool:
    """Say whether a key's values ask for universal matching: none, all empty, or one of them a lone ``*``.

    A lone ``*`` matches any value, the empty one too, for every VR (PS3.4 C.2.2.2.4): a date, time or UID
    never reaches its parser with it, and a value list holding it (any of its values) matches everything.
    """
    return any(value.strip() == "*" for value in values) or not any(values)


def attribute_q(path: str, vr: str, values: list[str], *, name: str, multi_valued: bool = False) -> Q:
    """Match one key on an index column by its VR; several values mean any of them (a value list)."""
    if is_universal(values):
        return Q()
    values = [value for value in values if value != ""]
    if vr == "UI":
        return uid_q(path, values)
    if vr in _INT_VRS:
        return int_q(path, values, name=name)
    q = Q()
    for value in values:
        if vr == "DA":
            q |= date_q(path, value)
        elif vr == "TM":
            q |= time_q(path, value)
        elif vr == "PN":
            q |= person_name_q(path, value)
        elif multi_valued:
            for code in split_list(value):
                q |= codes_q(path, code)
        else:
            q |= text_q(path, value)
    return q


def header_match(vr: str, query_values: list[str], stored: list[str]) -> bool:
    """Match a key against values read from a stored header (DICOM JSON), by the same rules."""
    if vr == "SQ" or is_universal(query_values):
        return True  # sequence matching is not supported: treated as universal
    for query in query_values:
        for value in stored:
            if vr == "UI":
                if value in split_list(query):
                    return True
            elif vr in ("DA", "TM") and value:
                parse = parse_date if vr == "DA" else parse_time
                low, high = _range(query, parse)
                try:
                    stored_value = parse(value)
                except MatchInvalid:
                    continue
                if (low is None or stored_value >= low) and (high is None or stored_value <= high):
                    return True
            elif vr == "PN":
                pattern = name_trimmed(query.strip())
                if pattern in ("", "*"):
                    return True
                groups = [value, *value.split("=")] if "=" not in pattern else [value]
                if any(wildcard_match(pattern, name_trimmed(group), ignore_case=True) for group in groups):
                    return True
            elif wildcard_match(query, value):
                return True
    return False


def patients_narrow(queryset: QuerySet[Any], *, clinic: Clinic | int, patient_q: Q, path: str) -> QuerySet[Any]:
    """Narrow a study, series or instance search to the patients matching ``patient_q`` (one query).

    The planner cannot estimate how many names a pattern matches, and a wrong guess walks the whole
    date index filtering each row's patient. Finding the patients first, through their own indexes,
    gives it a short list of ids to fetch just those patients' rows by the patient index instead.
    ``path`` leads from the searched model to the patient (``patient__``, ``study__patient__``, ...).
    """
    # name_words_q compares the given name under this annotation's name (only computed where used).
    patients = (
        Patient.objects.for_clinic(clinic).annotate(given_name_upper=given_name_upper("patient_name")).filter(patient_q)
    )
    ids = list(patients.values_list("id", flat=True)[: PATIENT_IDS_MAX + 1])
    if len(ids) <= PATIENT_IDS_MAX:
        return queryset.filter(**{f"{path}id__in": ids})
    return queryset.filter(**{f"{path}id__in": patients.values("id")})


def rows_narrow(queryset: QuerySet[Any], q: Q) -> QuerySet[Any]:
    """``rows_match`` without the number of matches."""
    return rows_match(queryset, q)[0]


def rows_match(queryset: QuerySet[Any], q: Q) -> tuple[QuerySet[Any], int | None]:
    """Narrow a sorted, paged search to the rows matching ``q`` (a name), deciding by their number (one query).

    The planner guesses how many rows a name pattern matches from coarse statistics. Guessing many when
    there are few, it walks the date order filtering each row for a page that never fills, reading the
    whole clinic ('Smith, Mary' matched nothing: 160,000 buffers, 430 ms at 100,000 studies). Taking up
    to ``PATIENT_IDS_MAX`` + 1 matching ids first, in no order (through the name indexes), settles it: few
    matches are fetched by id and sorted, and for many the date walk finds a page after a few rows each.
    Also returns how many matched, up to ``PATIENT_IDS_MAX`` + 1 ("more"), or None when ``q`` is empty.
    """
    if not q:
        return queryset, None
    ids = list(queryset.filter(q).order_by().values_list("id", flat=True)[: PATIENT_IDS_MAX + 1])
    if len(ids) <= PATIENT_IDS_MAX:
        return queryset.filter(id__in=ids), len(ids)
    return queryset.filter(_walk_form(q)), len(ids)


def _walk_form(q: Q) -> Q:
    """``q`` as checked row by row in a walk of the date order, without the conditions that only find candidates.

    Over 1,000 matches are best found by walking the date order, a page after a few rows each. Left out:
    ``dicom_like_candidates`` (implied by the arms beside it; in the walk, PostgreSQL took it to the trigram
    index and sorted all 5,000 candidates of ``*SON^?ARY``, 2,700 buffers), and on SQLite the prefix
    ranges ``_prefix_range_q`` added for its name indexes (with them, SQLite read every match from those
    indexes and sorted them: 'smi', 3,300 rows, 12 ms). A name's ``q`` compares no other value by
    ``__gte`` or ``__lt``. The LIKEs are bare (``dicom_like_walk``): on SQLite without asking the trigram
    index for candidates (``*SON^*``: SQLite read every candidate from it, then sorted them all for one
    page), on PostgreSQL without the prefix index's range (see ``DicomLikeWalk``).
    """
    sqlite = connection.vendor == "sqlite"
    dropped = ("__dicom_like_candidates", "__gte", "__lt") if sqlite else ("__dicom_like_candidates",)
    kept = Q()
    kept.connector, kept.negated = q.connector, q.negated
    for child in q.children:
        if isinstance(child, Q):
            kept.children.append(_walk_form(child))
        elif isinstance(child, tuple) and str(child[0]).endswith(dropped):
            continue
        elif isinstance(child, tuple) and str(child[0]).endswith("__dicom_like"):
            kept.children.append((str(child[0]) + "_walk", child[1]))
        else:
            kept.children.append(child)
    return kept


# Time budget -----------------------------------------------------------------------------------------


@contextmanager
def search_budget(seconds: float | None = None) -> Iterator[None]:
    """Stop any statement of a search that runs past its budget; raise SearchTooSlow for it.

    One tenant's costly search must not hold the database for everyone. PostgreSQL enforces
    ``statement_timeout`` (set for this transaction only); SQLite interrupts through a progress handler.
    """
    budget = settings.SEARCH_TIME_LIMIT_SECONDS if seconds is None else seconds
    message = "The search took too long and was stopped; narrow it (more characters, fewer wildcards, a date range)."
    if connection.vendor == "postgresql":
        try:
            nested = connection.in_atomic_block
            with transaction.atomic():
                with connection.cursor() as cursor:
                    # One round trip for all. No parallel workers: a search reads a bounded number of
                    # index rows, and worker start-up and their doubled reads only slow it (and the other
                    # requests sharing the cores). A search's filters are text functions (UPPER, SPLIT_PART,
                    # LIKE), about 1 us a row, which the default operator cost (0.0025) prices as nearly
                    # free: it filtered 30,000 rows of the clinic (38 ms) rather than read 1,001 names from
                    # their index (1 ms). One call costs about what 1/20 of reading a page does.
                    cursor.execute(
                        f"SET LOCAL statement_timeout = {int(budget * 1000)}; "
                        f"SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL cpu_operator_cost = {SEARCH_OPERATOR_COST}"
                    )
                yield
                if nested:  # SET LOCAL lasts to the end of the outer transaction: give the rest its own.
                    with connection.cursor() as cursor:
                        cursor.execute(
                            "SET LOCAL statement_timeout TO DEFAULT; SET LOCAL max_parallel_workers_per_gather TO DEFAULT; "
                            "SET LOCAL cpu_operator_cost TO DEFAULT"
                        )
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) == "57014":  # query_canceled
                raise SearchTooSlow(message) from exc
            raise
        return
    if connection.vendor != "sqlite":
        yield
        return
    connection.ensure_connection()
    deadline = monotonic() + budget
    raw = connection.connection
    raw.set_progress_handler(lambda: int(monotonic() > deadline), 10_000)
    try:
        yield
    except OperationalError as exc:
        if "interrupted" in str(exc):
            raise SearchTooSlow(message) from exc
        raise
    finally:
        raw.set_progress_handler(None, 0)
