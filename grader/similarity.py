"""Shared answers: pairs of submissions whose answer cells are near-identical.

The measure is winnowing (Schleimer, Wilkerson & Aiken 2003, the algorithm behind MOSS) over
normalised tokens:

* code answer cells are read with Python's `tokenize`: comments, blank lines and line breaks inside
  brackets are dropped, every string literal becomes `S`, every number `N`, every local name `V`
  (keywords, attribute names after a dot, builtins and the names the released notebook imports or
  defines — `torch`, `F`, `load_model`, … — are kept, so renaming variables changes nothing while two
  implementations that call different functions stay different); a trailing comma before a closing
  bracket is dropped, so a code formatter changes nothing either. IPython magics are ignored; a cell
  that does not tokenise (a syntax error) is read by a simpler regular-expression tokenizer.
* written answers (markdown answer cells) are read as lower-case words.

Every k consecutive tokens are hashed and, from every window of w consecutive hashes, the smallest
is kept (the rightmost on ties): a passage shared by two answers that is at least k + w - 1 tokens
long is always found, passages shorter than k tokens never are. Fingerprints that also occur in the
course's own material — every cell of the released notebook (stubs, docstrings, the given functions,
the questions) and the `xailab` package — are removed, and so are fingerprints that a large part of
the class shares (idioms everybody writes; MOSS's `-m`), so that the whole class does not look alike.

Pairs are found through an inverted index (fingerprint → submissions), never by comparing every pair.
Per answer cell and over all answers of the notebook, a pair's score is the share of the smaller
answer's fingerprints that the other answer has too; a pair is reported when a cell or the whole
notebook is above its threshold and the shared passages cover enough tokens to mean something.

A reported pair is evidence for a person to judge (honest students do sometimes write the same
short code), never a penalty: nothing here changes a grade.
"""
from __future__ import annotations

import ast
import builtins
import io
import json
import keyword
import math
import re
import tokenize
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CODE_K, CODE_W = 10, 6  # tokens per k-gram, k-grams per window (matches of >= 15 tokens always found)
TEXT_K, TEXT_W = 6, 4  # words per k-gram, k-grams per window (matches of >= 9 words always found)
CELL_THRESHOLD = 0.8  # share of the smaller answer cell's fingerprints found in the other one
NOTEBOOK_THRESHOLD = 0.6  # the same over all answers of the notebook
MIN_TOKENS = 30  # a code cell match must cover at least this many tokens of both answers
MIN_WORDS = 20  # a written answer match at least this many words
MIN_NOTEBOOK_TOKENS = 60  # a notebook match the same, summed over cells
COMMON_SHARE = 0.2  # a fingerprint found in more than this share of the class is an idiom, ignored ...
COMMON_MIN = 10  # ... once it is found in more than this many submissions
MAX_SOURCE_CHARS = 50_000  # per cell: a huge pasted cell cannot slow the report down

_MAGIC = re.compile(r"^\s*(%|!)")
_FALLBACK = re.compile(r"""[A-Za-z_]\w*|\d[\w.]*|"(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?|[^\s\w]""")
_WORD = re.compile(r"[^\W_]+")
_KEPT_NAMES = frozenset(dir(builtins)) | {"self", "cls"}
_CLOSING = {")", "]", "}"}


# ---------------------------------------------------------------- tokens

@dataclass
class Tokens:
    """Normalised tokens of one cell and the source line (0-based) each one came from."""

    kind: str  # "code" or "text"
    tokens: list[str]
    lines: list[int]


def given_names(sources: list[str]) -> set[str]:
    """Names the course's own code imports or defines (kept as they are when normalising)."""
    names: set[str] = set()
    for source in sources:
        try:
            tree = ast.parse(_strip_magics(source))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.col_offset == 0:
                names.add(node.name)
    return names


def _strip_magics(source: str) -> str:
    """IPython magics and shell escapes become blank lines (line numbers are kept)."""
    return "\n".join("" if _MAGIC.match(line) else line for line in source.splitlines())


def code_tokens(source: str, keep: set[str] | frozenset[str] = frozenset()) -> Tokens:
    source = _strip_magics(source[:MAX_SOURCE_CHARS]) + "\n"
    out, lines = [], []
    try:
        raw = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        raw = None
    if raw is None:  # not Python: the same normalisation on a rough tokenization
        for number, line in enumerate(source.splitlines()):
            line = line.split("#", 1)[0] if "'" not in line and '"' not in line else line
            for m in _FALLBACK.finditer(line):
                out.append(_normal(m.group(), out[-1] if out else "", keep))
                lines.append(number)
            if out and lines[-1] == number:
                out.append(";"), lines.append(number)
    else:
        for tok in raw:
            kind, text = tok.type, tok.string
            if kind in (tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER):
                continue
            if kind == tokenize.NEWLINE or (kind == tokenize.OP and text == ";"):
                if out and out[-1] not in (";", "{", "}"):
                    out.append(";"), lines.append(tok.start[0] - 1)
                continue
            if kind == tokenize.INDENT:
                norm = "{"
            elif kind == tokenize.DEDENT:
                norm = "}"
            elif kind == tokenize.STRING:
                norm = "S"
            elif kind == tokenize.NUMBER:
                norm = "N"
            elif kind == tokenize.NAME:
                norm = _normal(text, out[-1] if out else "", keep)
            else:
                norm = text
            if norm in _CLOSING and out and out[-1] == ",":  # a formatter's trailing comma
                out.pop(), lines.pop()
            out.append(norm), lines.append(tok.start[0] - 1)
    return Tokens("code", out, lines)


def _normal(word: str, previous: str, keep) -> str:
    if word[0].isdigit():
        return "N"
    if word[0] in "\"'":
        return "S"
    if not (word[0].isalpha() or word[0] == "_"):
        return word
    if keyword.iskeyword(word) or previous == "." or word in _KEPT_NAMES or word in keep:
        return word
    return "V"


def text_tokens(source: str) -> Tokens:
    out, lines = [], []
    for number, line in enumerate(source[:MAX_SOURCE_CHARS].splitlines()):
        for m in _WORD.finditer(line.lower()):
            out.append("N" if m.group()[0].isdigit() else m.group())
            lines.append(number)
    return Tokens("text", out, lines)


# ---------------------------------------------------------------- fingerprints

def _params(kind: str) -> tuple[int, int]:
    return (CODE_K, CODE_W) if kind == "code" else (TEXT_K, TEXT_W)


def kgram_hashes(toks: Tokens) -> list[int]:
    """The hash of every k-gram (deterministic: CRC-32 of the joined tokens, tagged with the kind)."""
    k, _ = _params(toks.kind)
    tag = b"c\x1f" if toks.kind == "code" else b"t\x1f"
    joined = ["\x1f".join(toks.tokens[i:i + k]).encode() for i in range(len(toks.tokens) - k + 1)]
    return [zlib.crc32(tag + g) for g in joined]


def winnow(hashes: list[int], w: int) -> dict[int, list[int]]:
    """Winnowing: the smallest hash of every window of w (rightmost on ties) → the k-gram positions."""
    chosen: dict[int, list[int]] = defaultdict(list)
    if not hashes:
        return {}
    if len(hashes) <= w:
        i = min(range(len(hashes)), key=lambda j: (hashes[j], -j))
        chosen[hashes[i]].append(i)
        return dict(chosen)
    last = -1
    for start in range(len(hashes) - w + 1):
        window = hashes[start:start + w]
        low = min(window)
        i = start + w - 1 - window[::-1].index(low)
        if i != last:
            chosen[low].append(i)
            last = i
    return dict(chosen)


def fingerprints(toks: Tokens) -> dict[int, list[int]]:
    return winnow(kgram_hashes(toks), _params(toks.kind)[1])


# ---------------------------------------------------------------- submissions

@dataclass
class Cell:
    grade_id: str
    kind: str  # "code" or "text"
    source: str
    tokens: Tokens | None = None
    prints: dict[int, list[int]] = field(default_factory=dict)  # fingerprint → k-gram positions (after exclusions)
    own: list[bool] = field(default_factory=list)  # per token: not inside a passage of the course's material


@dataclass
class Submission:
    student: str  # as submitted
    sid: str
    lab: str
    cells: dict[str, Cell]  # grade_id → answer cell


@dataclass
class CellMatch:
    grade_id: str
    kind: str
    score: float  # shared fingerprints / the smaller answer's fingerprints
    tokens: int  # tokens (words) in shared passages, the smaller of the two sides
    lines_a: list[int]  # 0-based source lines of a's cell inside shared passages
    lines_b: list[int]
    source_a: str
    source_b: str


@dataclass
class Pair:
    lab: str
    a: Submission
    b: Submission
    score: float  # over all answers of the notebook
    tokens: int
    cells: list[CellMatch]  # every answer cell the two share something in, best first
    flagged: list[str] = field(default_factory=list)  # the cells above the cell threshold


@dataclass
class LabSimilarity:
    lab: str
    submissions: int
    pairs: list[Pair]  # above a threshold, most similar first
    nearest: dict[str, float]  # sid → its highest notebook score with anyone (0 when it shares nothing)
    compared_cells: list[str]
    excluded: int  # fingerprints of the course's own material


def _text(source) -> str:
    if isinstance(source, str):
        return source
    if isinstance(source, list):
        return "".join(s for s in source if isinstance(s, str))
    return ""


def answer_cells(nb) -> dict[str, Cell]:
    """The answer cells of a notebook (nbgrader solution cells: code answers and written answers)."""
    cells = {}
    for cell in nb.get("cells", []):
        if not isinstance(cell, dict):
            continue
        meta = cell.get("metadata")
        meta = meta.get("nbgrader") if isinstance(meta, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        gid = meta.get("grade_id")
        if not meta.get("solution") or not gid:
            continue
        gid = str(gid)
        source = _text(cell.get("source", ""))
        kind = "code" if cell.get("cell_type") == "code" else "text"
        if gid in cells:  # two cells with one grade_id: the driver grades the first, compare it
            continue
        cells[gid] = Cell(gid, kind, source)
    return cells


def course_sources(release_notebooks: list) -> tuple[list[str], list[str]]:
    """Code and text that the course gives students in the released notebooks: every cell."""
    code, text = [], []
    for nb in release_notebooks:
        for cell in nb.get("cells", []):
            if not isinstance(cell, dict):
                continue
            source = _text(cell.get("source", ""))
            if cell.get("cell_type") == "code":
                code.append(source)
            text.append(source)  # a written answer may quote code or prose of the notebook
    return code, text


@lru_cache(maxsize=4)
def _package_sources(package: Path) -> tuple[str, ...]:
    sources = []
    for path in sorted(package.rglob("*.py")) if package.is_dir() else []:
        try:
            sources.append(path.read_text(errors="replace"))
        except OSError:
            continue
    return tuple(sources)


@lru_cache(maxsize=4)
def _package_names(package: Path) -> frozenset[str]:
    return frozenset(given_names(list(_package_sources(package))))


@lru_cache(maxsize=16)
def _package_hashes(package: Path, keep: frozenset[str]) -> frozenset[int]:
    return frozenset(h for source in _package_sources(package) for h in kgram_hashes(code_tokens(source, keep)))


def course_material(release_notebooks: list, package: Path | None = REPO / "xailab") -> tuple[frozenset[str], set[int]]:
    """The names kept when normalising, and the fingerprints of everything the course gives students:
    the released notebooks' cells and the `xailab` package's Python files."""
    code, text = course_sources(release_notebooks)
    keep = frozenset(given_names(code)) | (_package_names(package) if package is not None else frozenset())
    excluded = set(_package_hashes(package, keep)) if package is not None else set()
    for source in code:
        excluded.update(kgram_hashes(code_tokens(source, keep)))
    for source in text:
        excluded.update(kgram_hashes(text_tokens(source)))
    return keep, excluded


def compare_lab(lab: str, submissions: list[Submission], release_notebooks: list, *,
                package: Path | None = REPO / "xailab", cell_threshold: float = CELL_THRESHOLD,
                notebook_threshold: float = NOTEBOOK_THRESHOLD, min_tokens: int = MIN_TOKENS,
                min_words: int = MIN_WORDS,
                min_notebook_tokens: int = MIN_NOTEBOOK_TOKENS) -> LabSimilarity:
    """The pairs of one lab's submissions that share answers (see the module's docstring)."""
    keep, excluded = course_material(release_notebooks, package)

    subs = sorted(submissions, key=lambda s: (s.sid, s.student))
    compared = sorted({gid for s in subs for gid in s.cells})
    for s in subs:
        for cell in s.cells.values():
            cell.tokens = code_tokens(cell.source, keep) if cell.kind == "code" else text_tokens(cell.source)
            cell.prints, cell.own = _own_fingerprints(cell.tokens, excluded)

    # idioms: fingerprints too many submissions share in a cell
    limit = max(COMMON_MIN, math.ceil(COMMON_SHARE * len(subs)))
    for gid in compared:
        df = Counter(h for s in subs if gid in s.cells for h in s.cells[gid].prints)
        common = {h for h, n in df.items() if n > limit}
        if common:
            for s in subs:
                if gid in s.cells:
                    s.cells[gid].prints = {h: p for h, p in s.cells[gid].prints.items() if h not in common}

    # inverted indexes (fingerprint → submissions), per answer cell and over the whole notebook:
    # pairs come from shared postings only, never from comparing every pair
    whole = [set().union(*(c.prints for c in s.cells.values())) if s.cells else set() for s in subs]
    shared = _co_occurrences(whole)
    candidates = {pair for pair, n in shared.items()
                  if n / max(1, min(len(whole[pair[0]]), len(whole[pair[1]]))) >= notebook_threshold}
    for gid in compared:
        sets = [set(s.cells[gid].prints) if gid in s.cells else set() for s in subs]
        for (i, j), n in _co_occurrences(sets).items():
            if n / max(1, min(len(sets[i]), len(sets[j]))) >= cell_threshold:
                candidates.add((i, j))

    nearest = {s.sid: 0.0 for s in subs}
    scores = {}
    for (i, j), n in shared.items():
        score = scores[(i, j)] = n / max(1, min(len(whole[i]), len(whole[j])))
        nearest[subs[i].sid] = max(nearest[subs[i].sid], score)
        nearest[subs[j].sid] = max(nearest[subs[j].sid], score)
    pairs = []
    for i, j in sorted(candidates):
        a, b = subs[i], subs[j]
        cells = [m for gid in compared if gid in a.cells and gid in b.cells
                 for m in [_cell_match(a.cells[gid], b.cells[gid])] if m is not None]
        tokens = sum(m.tokens for m in cells)
        cells.sort(key=lambda m: (-m.score, -m.tokens, m.grade_id))
        notebook_hit = scores[(i, j)] >= notebook_threshold and tokens >= min_notebook_tokens
        flagged = [m.grade_id for m in cells if m.score >= cell_threshold
                   and m.tokens >= (min_tokens if m.kind == "code" else min_words)]
        if notebook_hit or flagged:
            pairs.append(Pair(lab, a, b, round(scores[(i, j)], 3), tokens, cells, flagged))
    pairs.sort(key=lambda p: (-p.score, -len(p.flagged), -p.tokens, p.a.sid, p.b.sid))
    return LabSimilarity(lab, len(subs), pairs, {k: round(v, 3) for k, v in sorted(nearest.items())},
                         compared, len(excluded))


def _own_fingerprints(toks: Tokens, excluded: set[int]) -> tuple[dict[int, list[int]], list[bool]]:
    """A cell's fingerprints without the course's material: a k-gram the course has is dropped, and so
    is one made mostly of tokens inside such k-grams (where two pasted pieces of given code meet)."""
    k, w = _params(toks.kind)
    hashes = kgram_hashes(toks)
    own = [True] * len(toks.tokens)
    for i, h in enumerate(hashes):
        if h in excluded:
            own[i:i + k] = [False] * k
    prints = {}
    for h, positions in winnow(hashes, w).items():
        kept = [p for p in positions if sum(own[p:p + k]) * 2 >= k]
        if kept and h not in excluded:
            prints[h] = kept
    return prints, own


def _co_occurrences(sets: list[set[int]]) -> Counter:
    """(i, j) → how many fingerprints sets i and j share, for every pair sharing any (i < j)."""
    index: dict[int, list[int]] = defaultdict(list)
    for i, prints in enumerate(sets):
        for h in prints:
            index[h].append(i)
    shared: Counter = Counter()
    for posting in index.values():
        if len(posting) > 1:
            shared.update(combinations(posting, 2))
    return shared


def _covered(positions: list[int], k: int, cell: Cell) -> tuple[int, list[int]]:
    """The student's own tokens covered by k-grams at these positions, and the source lines they lie on."""
    covered = set()
    for p in positions:
        covered.update(t for t in range(p, min(p + k, len(cell.own))) if cell.own[t])
    return len(covered), sorted({cell.tokens.lines[t] for t in covered})


def _cell_match(ca: Cell, cb: Cell) -> CellMatch | None:
    common = ca.prints.keys() & cb.prints.keys()
    if not common:
        return None
    k, _ = _params(ca.kind)
    na, lines_a = _covered([p for h in common for p in ca.prints[h]], k, ca)
    nb, lines_b = _covered([p for h in common for p in cb.prints[h]], k, cb)
    score = len(common) / max(1, min(len(ca.prints), len(cb.prints)))
    return CellMatch(ca.grade_id, ca.kind, round(score, 3), min(na, nb), lines_a, lines_b, ca.source, cb.source)


# ---------------------------------------------------------------- a grading workspace

def _read_nb(path: Path) -> dict | None:
    """A notebook as plain JSON (no schema validation: the driver has read and repaired it already)."""
    try:
        return _reads_nb(path.read_bytes())
    except OSError:
        return None


def _reads_nb(data: bytes) -> dict | None:
    try:
        nb = json.loads(data.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    return nb if isinstance(nb, dict) and isinstance(nb.get("cells"), list) else None


def workspace_submissions(workspace: Path, records: list[dict] | None = None) -> dict[str, list[Submission]]:
    """lab → its submissions' answer cells, from the workspace's autograded notebooks (or, where a
    notebook is not on disk, from the journaled results `records`: dicts with student, sid, lab, autograded)."""
    import base64

    by_lab: dict[str, list[Submission]] = defaultdict(list)
    seen = set()
    for record in records or []:
        sid, lab = str(record.get("sid") or record.get("student")), str(record.get("lab"))
        folder = workspace / "autograded" / sid / lab
        cells: dict[str, Cell] = {}
        paths = sorted(folder.glob("*.ipynb")) if folder.is_dir() else []
        notebooks = [_read_nb(p) for p in paths]
        if not paths:
            notebooks = []
            for _, data in sorted((record.get("autograded") or {}).items()):
                try:
                    notebooks.append(_reads_nb(base64.b64decode(data)))
                except (ValueError, TypeError):
                    continue
        for nb in notebooks:
            if nb is not None:
                cells.update(answer_cells(nb))
        by_lab[lab].append(Submission(str(record.get("student", sid)), sid, lab, cells))
        seen.add((sid, lab))
    root = workspace / "autograded"
    if root.is_dir():  # notebooks without a record (an older run): the folder names are all there is
        for folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
            sid, lab = folder.parent.name, folder.name
            if (sid, lab) in seen:
                continue
            cells = {}
            for path in sorted(folder.glob("*.ipynb")):
                nb = _read_nb(path)
                if nb is not None:
                    cells.update(answer_cells(nb))
            by_lab[lab].append(Submission(sid, sid, lab, cells))
    return dict(by_lab)


def release_notebooks(workspace: Path, lab: str) -> list:
    """The released notebooks of a lab: the workspace's copy, else the repository's labs/."""
    for folder in (workspace / "release" / lab, REPO / "labs" / lab):
        paths = sorted(folder.glob("*.ipynb")) if folder.is_dir() else []
        if paths:
            return [nb for nb in map(_read_nb, paths) if nb is not None]
    return []


def shared_answers(workspace: Path, records: list[dict] | None = None, **options) -> dict[str, LabSimilarity]:
    """Every lab's shared answers in a grading workspace (options: those of `compare_lab`)."""
    return {lab: compare_lab(lab, subs, release_notebooks(workspace, lab), **options)
            for lab, subs in sorted(workspace_submissions(workspace, records).items())}
