"""The class report of a grading run: `<workspace>/report.html` and its figures.

    python -m grader.report [WORKSPACE]        (default: build/grading)

It reads what the grading driver leaves in its workspace — summary.json, the journaled results
(results/<sid>--<lab>.json: notes, verdicts of the hidden checks, the cost breakdown) and the
autograded notebooks — and writes one HTML page that opens offline in any browser (no script, no
network; the figures are PNG files in report-figures/ next to it, or embedded with --embed):

* scores: a histogram per lab;
* mistakes: per lab, the share of the class that failed each hidden check, split by kind (wrong
  result, raised an error, over the time budget, not run), with the feedback messages grouped;
* time: the distribution of grading times, where the time went per lab, the slowest submissions;
* notes: submissions whose grading noted something (tampering, abnormal ends, errors in answer
  cells, repaired metadata, files) and the run's problems;
* shared answers: pairs of submissions with near-identical answers (grader/similarity.py), the cells
  side by side — evidence for a person to judge, never a penalty.

Everything that comes from a submission (names, notes, messages, code) is HTML-escaped, and the page
forbids scripts (Content-Security-Policy), so a student's text cannot run in the instructor's browser.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import math
import re
import statistics
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from grader import similarity

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO / "solutions"
FIGURES = "report-figures"
CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([A-Za-z0-9_.]+)["']""")
SLOWEST = 15  # submissions in the time figure
MAX_PAIRS = 40  # pairs per lab shown side by side (the rest are listed)
MAX_LINES = 150  # lines of a cell shown side by side
MAX_MESSAGE = 700  # characters of a feedback message shown

# kinds of failed checks, in the order they are stacked, with their colours
KINDS = {"wrong result": "#d62728", "raised an error": "#ff7f0e", "over the time budget": "#9467bd",
         "grader problem": "#1f77b4", "not run": "#9e9e9e"}
# the cost breakdown of a submission (worker.breakdown), in the order it is stacked
COSTS = {"start": ("kernel start", "#4e79a7"), "imports": ("imports (setup cell)", "#a0cbe8"),
         "model_loads": ("model loads", "#f28e2b"), "preparing_checks": ("preparing checks", "#ffbe7d"),
         "student_code_in_checks": ("student's code in checks", "#e15759"),
         "checker_and_transfer": ("checker and transfer", "#76b7b2"), "other_cells": ("other cells", "#59a14f"),
         "rest": ("rest (nbgrader, saving)", "#bab0ac")}
# kinds of notes, most serious first: (title, colour, test)
NOTE_KINDS = [
    ("tampering or protocol", "#b2182b", lambda n: n.startswith(("tampering", "a malformed request",
                                                                  "a request for an unknown check"))),
    ("abnormal end", "#ef8a62", lambda n: "ended abnormally" in n or "kernel stopped" in n
     or "generate_feedback failed" in n),
    ("error in an answer cell", "#fdb863", lambda n: bool(re.match(r"^\w[\w.]* in answer cell ", n))),
    ("forbidden library", "#e7d4e8", lambda n: n.startswith("answer cell ") and " imports " in n),
    ("files", "#67a9cf", lambda n: "missing from the submission" in n or n.startswith(("graded ", "two notebooks",
                                                                                         "nothing to grade"))
     or "not a readable" in n or ".ipynb: " in n),
    ("repaired cells", "#92c5de", lambda n: "metadata missing" in n or "carried grade_id" in n
     or "were put back from the release" in n),
]
FAILED_CELLS = re.compile(r"^\d+ test cells failed")


# ---------------------------------------------------------------- reading the workspace

@dataclass
class Run:
    workspace: Path
    rows: list[dict]
    records: list[dict]  # journaled results, without the notebooks' bytes where the notebook is on disk
    problems: list[str]
    summary: dict
    unreadable: list[str] = field(default_factory=list)


def read_run(workspace: Path) -> Run:
    workspace = Path(workspace)
    unreadable = []
    try:
        summary = json.loads((workspace / "summary.json").read_text())
        if not isinstance(summary, dict):
            raise ValueError("not an object")
    except FileNotFoundError:
        summary = {}
    except (OSError, ValueError) as err:
        summary = {}
        unreadable.append(f"summary.json ({type(err).__name__})")
    records = []
    for path in sorted((workspace / "results").glob("*.json")):
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or "lab" not in record:
                raise ValueError("not a result")
        except (OSError, ValueError) as err:
            unreadable.append(f"results/{path.name} ({type(err).__name__})")
            continue
        sid = str(record.get("sid") or record.get("student") or path.stem.split("--")[0])
        record["sid"], record["lab"] = sid, str(record["lab"])
        record["student"] = str(record.get("student") or sid)
        notes = record.get("notes")
        record["notes"] = [str(n) for n in notes if n] if isinstance(notes, list) else []
        record["verdicts"] = [v for v in record.get("verdicts") or [] if isinstance(v, dict)] \
            if isinstance(record.get("verdicts"), list) else []
        record["grades"] = [g for g in record.get("grades") or [] if isinstance(g, dict)] \
            if isinstance(record.get("grades"), list) else []
        timings = record.get("timings")
        record["timings"] = {k: v for k, v in timings.items() if isinstance(v, (int, float))} \
            if isinstance(timings, dict) else {}
        seconds = record.get("seconds")
        record["seconds"] = float(seconds) if isinstance(seconds, (int, float)) else 0.0
        if (workspace / "autograded" / sid / str(record["lab"])).is_dir():
            record.pop("autograded", None)  # the notebooks are on disk: no need to keep them in memory
        records.append(record)
    rows = summary.get("rows")
    rows = [r for r in rows if isinstance(r, dict) and r.get("lab") is not None] if isinstance(rows, list) else []
    if not rows:  # no summary (an interrupted run): rows from the results
        for rec in records:
            grades = rec.get("grades") or []
            auto = [g for g in grades if isinstance(g, dict) and not g.get("needs_manual_grade")]
            manual = [g for g in grades if isinstance(g, dict) and g.get("needs_manual_grade")]
            rows.append(dict(student=rec["student"], sid=rec["sid"], lab=rec["lab"],
                             auto_score=sum(g.get("auto_score") or 0 for g in auto),
                             auto_max=sum(g.get("max_score") or 0 for g in auto),
                             manual_max=sum(g.get("max_score") or 0 for g in manual),
                             seconds=rec.get("seconds", 0.0), notes=rec.get("notes", []), sandboxed=None))
    for row in rows:
        row["lab"] = str(row["lab"])
        row["student"] = str(row.get("student") or row.get("sid") or "?")
        row["sid"] = str(row.get("sid") or row["student"])
        notes = row.get("notes")
        row["notes"] = [str(n) for n in notes if n] if isinstance(notes, list) else []
        for key in ("auto_score", "auto_max", "manual_max", "seconds"):
            row[key] = float(row[key]) if isinstance(row.get(key), (int, float)) else 0.0
    problems = summary.get("problems")
    problems = [str(p) for p in problems] if isinstance(problems, list) else []
    return Run(workspace, rows, records, problems, summary, unreadable)


def lab_checks(lab: str) -> list[str]:
    """The hidden checks of a lab in notebook order (from its solution notebook, where there is one)."""
    names = []
    for path in sorted((SOLUTIONS / lab).glob("*.ipynb")) if (SOLUTIONS / lab).is_dir() else []:
        try:
            cells = json.loads(path.read_text()).get("cells", [])
        except (OSError, ValueError):
            continue
        for cell in cells:
            source = cell.get("source", "")
            names += CHECK_CALL.findall(source if isinstance(source, str) else "".join(source))
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------- mistakes

def failure_kind(message: str) -> str:
    body = message.lower()
    if body.endswith("not run") or "not run (" in body:
        return "not run"
    if "not your fault" in body or "could not prepare" in body or "no such check" in body:
        return "grader problem"
    if "time budget" in body or "did not finish within" in body or "did not answer within" in body:
        return "over the time budget"
    if " raised " in body:
        return "raised an error"
    return "wrong result"


def message_body(name: str, message: str) -> str:
    for prefix in (f"✗ {name}: ", f"✗ {name}:", "✗ "):
        if message.startswith(prefix):
            return message[len(prefix):].strip()
    return message.strip()


def message_key(body: str) -> str:
    """Messages that differ only in numbers, quoted text or spacing are one mistake."""
    key = re.sub(r"'[^'\n]{0,200}'|\"[^\"\n]{0,200}\"", "'…'", body)
    key = re.sub(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", "#", key)
    return re.sub(r"\s+", " ", key).strip()[:240]


@dataclass
class CheckStats:
    name: str
    lab: str
    total: int
    failed: Counter  # kind → count
    groups: list[tuple[int, str, int, str]]  # (count, example message, variants, kind), most frequent first

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values())


def mistakes(run: Run) -> dict[str, list[CheckStats]]:
    """lab → its checks: how many submissions failed each and why (failed = any call failed or it never ran)."""
    by_lab = defaultdict(list)
    for rec in run.records:
        by_lab[str(rec["lab"])].append(rec)
    out = {}
    for lab, records in sorted(by_lab.items()):
        seen = [v.get("name") for r in records for v in r.get("verdicts") or [] if isinstance(v, dict)]
        names = lab_checks(lab)
        names += sorted({str(n) for n in seen if n} - set(names))
        stats = []
        for name in names:
            failed, groups = Counter(), defaultdict(list)
            for rec in records:
                verdicts = [v for v in rec.get("verdicts") or [] if isinstance(v, dict) and v.get("name") == name]
                if verdicts and all(v.get("passed") for v in verdicts):
                    continue
                bad = [v for v in verdicts if not v.get("passed")]
                body = message_body(name, str(bad[-1].get("message", ""))) if bad else "not run"
                kind = failure_kind(body)
                failed[kind] += 1
                groups[(kind, message_key(body))].append(body)
            ordered = []
            for (kind, _), bodies in groups.items():
                example, _ = Counter(bodies).most_common(1)[0]
                ordered.append((len(bodies), example, len(set(bodies)), kind))
            ordered.sort(key=lambda g: (-g[0], g[1]))
            stats.append(CheckStats(name, lab, len(records), failed, ordered))
        out[lab] = stats
    return out


def note_kind(note: str) -> str | None:
    """The kind of a note; None for the routine "N test cells failed" (the mistakes section covers it)."""
    if FAILED_CELLS.match(note):
        return None
    for title, _, test in NOTE_KINDS:
        if test(note):
            return title
    return "other"


# ---------------------------------------------------------------- figures

class Figures:
    def __init__(self, folder: Path, embed: bool):
        self.folder, self.embed = folder, embed
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()

    def save(self, fig, name: str, alt: str) -> str:
        path = self.folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing glyphs of unusual names
            fig.savefig(path, dpi=100)
        if self.embed:
            src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        else:
            src = f"{FIGURES}/{quote(path.name)}"
        return f'<img src="{html.escape(src)}" alt="{esc(alt)}">'


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _plain_labels(labels) -> None:
    for label in labels:
        label.set_parse_math(False)  # a name with $ signs is a name, not a formula


def fig_scores(figs: Figures, rows: list[dict]) -> str:
    by_lab = defaultdict(list)
    for r in rows:
        by_lab[r["lab"]].append(r)
    if not by_lab:
        return ""
    labs = sorted(by_lab)
    cols = min(3, len(labs))
    nrows = math.ceil(len(labs) / cols)
    fig = _figure(4.2 * cols, 2.9 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, lab in zip(axes, labs):
        scores = [float(r.get("auto_score") or 0) for r in by_lab[lab]]
        top = max([float(r.get("auto_max") or 0) for r in by_lab[lab]] + scores + [1.0])
        if top <= 40:
            bins = [b - 0.5 for b in range(int(math.ceil(top)) + 2)]
        else:
            bins = 20
        ax.hist(scores, bins=bins, color="#4e79a7", edgecolor="white")
        mean = statistics.fmean(scores)
        ax.axvline(mean, color="#e15759", lw=1.5, label=f"mean {mean:.1f}")
        ax.set_xlim(-0.5, top + 0.5)
        ax.set_title(f"{lab}  (n = {len(scores)}, max {top:g})", fontsize=10)
        ax.set_xlabel("automatic score")
        ax.set_ylabel("submissions")
        ax.legend(fontsize=8, loc="upper left")
        ax.yaxis.get_major_locator().set_params(integer=True)
    for ax in axes[len(labs):]:
        ax.set_visible(False)
    return figs.save(fig, "scores", "score histograms per lab")


def fig_mistakes(figs: Figures, lab: str, stats: list[CheckStats]) -> str:
    ordered = sorted(stats, key=lambda s: (s.n_failed, s.name), reverse=True)
    if not ordered:
        return ""
    fig = _figure(10, 0.9 + 0.28 * len(ordered))
    ax = fig.subplots()
    y = list(range(len(ordered)))[::-1]
    left = [0.0] * len(ordered)
    for kind, colour in KINDS.items():
        widths = [s.failed.get(kind, 0) / max(1, s.total) for s in ordered]
        if any(widths):
            ax.barh(y, widths, left=left, color=colour, label=kind, height=0.7)
            left = [a + b for a, b in zip(left, widths)]
    for yi, s, x in zip(y, ordered, left):
        ax.text(x + 0.01, yi, f"{s.n_failed}/{s.total}", va="center", fontsize=8)
    ax.set_yticks(y, [s.name for s in ordered], fontsize=8)
    _plain_labels(ax.get_yticklabels())
    ax.set_xlim(0, 1.1)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_xlabel("share of the class that failed the check")
    ax.set_title(f"{lab}: hidden checks, most failed first", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return figs.save(fig, f"mistakes-{lab}", f"share of the class failing each check of {lab}")


def _cost_parts(timings: dict, total: float) -> dict[str, float]:
    parts = {k: max(0.0, float(timings.get(k) or 0)) for k in COSTS if k != "rest"}
    parts["rest"] = max(0.0, total - sum(parts.values()))
    return parts


def fig_time(figs: Figures, run: Run) -> tuple[str, str, list[dict]]:
    """The distribution of grading times per lab with the mean breakdown, and the slowest submissions."""
    rows = [r for r in run.rows if r.get("seconds")]
    if not rows:
        return "", "", []
    by_lab = defaultdict(list)
    for r in rows:
        by_lab[r["lab"]].append(float(r["seconds"]))
    labs = sorted(by_lab)
    fig = _figure(11, 1.4 + 0.45 * len(labs))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.boxplot([by_lab[lab] for lab in labs][::-1], orientation="horizontal", widths=0.6, showfliers=True,
                flierprops=dict(markersize=3))
    ax1.set_yticks(range(1, len(labs) + 1), labs[::-1], fontsize=8)
    ax1.set_xlabel("seconds per submission")
    ax1.set_title("grading time per submission", fontsize=10)
    records = defaultdict(list)
    for rec in run.records:
        if isinstance(rec.get("timings"), dict):
            records[str(rec["lab"])].append(rec)
    left = [0.0] * len(labs)
    y = list(range(len(labs)))[::-1]
    for key, (label, colour) in COSTS.items():
        widths = []
        for lab in labs:
            recs = records.get(lab, [])
            widths.append(statistics.fmean(_cost_parts(r["timings"], float(r["timings"].get("total") or
                                                                         r.get("seconds") or 0))[key]
                                           for r in recs) if recs else 0.0)
        ax2.barh(y, widths, left=left, color=colour, label=label, height=0.6)
        left = [a + b for a, b in zip(left, widths)]
    ax2.set_yticks(y, labs, fontsize=8)
    ax2.set_xlabel("mean seconds per submission")
    ax2.set_title("where the time goes (mean per lab)", fontsize=10)
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    distribution = figs.save(fig, "time", "grading time per lab and its breakdown")

    slow = sorted(run.records, key=lambda r: -float(r.get("seconds") or 0))[:SLOWEST]
    slow = [r for r in slow if r.get("seconds")]
    if not slow:
        return distribution, "", []
    fig = _figure(11, 1.2 + 0.32 * len(slow))
    ax = fig.subplots()
    y = list(range(len(slow)))[::-1]
    left = [0.0] * len(slow)
    for key, (label, colour) in COSTS.items():
        widths = [_cost_parts(r.get("timings") or {}, float(r.get("seconds") or 0))[key] for r in slow]
        ax.barh(y, widths, left=left, color=colour, label=label, height=0.7)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(y, [f"{_short(r['student'])} · {r['lab']}" for r in slow], fontsize=8)
    _plain_labels(ax.get_yticklabels())
    ax.set_xlabel("seconds")
    ax.set_title(f"the {len(slow)} slowest submissions", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return distribution, figs.save(fig, "slowest", "the slowest submissions and their cost breakdown"), slow


def fig_notes(figs: Figures, counts: Counter) -> str:
    kinds = [(t, c) for t, c, _ in NOTE_KINDS] + [("other", "#999999")]
    kinds = [(t, c) for t, c in kinds if counts.get(t)]
    if not kinds:
        return ""
    fig = _figure(8, 0.8 + 0.35 * len(kinds))
    ax = fig.subplots()
    y = list(range(len(kinds)))[::-1]
    ax.barh(y, [counts[t] for t, _ in kinds], color=[c for _, c in kinds], height=0.65)
    for yi, (t, _) in zip(y, kinds):
        ax.text(counts[t], yi, f" {counts[t]}", va="center", fontsize=8)
    ax.set_yticks(y, [t for t, _ in kinds], fontsize=9)
    ax.set_xlabel("submissions")
    ax.set_title("submissions with notes, by kind", fontsize=10)
    ax.set_xlim(0, max(counts[t] for t, _ in kinds) * 1.15 + 0.5)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return figs.save(fig, "notes", "submissions with notes by kind")


def fig_similarity(figs: Figures, result: similarity.LabSimilarity) -> str:
    values = list(result.nearest.values())
    if len(values) < 2:
        return ""
    fig = _figure(8, 2.4)
    ax = fig.subplots()
    ax.hist(values, bins=[i / 20 for i in range(21)], color="#76b7b2", edgecolor="white")
    ax.axvline(similarity.NOTEBOOK_THRESHOLD, color="#e15759", lw=1.2, ls="--",
               label=f"notebook threshold {similarity.NOTEBOOK_THRESHOLD:.0%}")
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_xlabel("highest share of answers found in another submission (whole notebook)")
    ax.set_ylabel("submissions")
    ax.set_title(f"{result.lab}: each submission's closest match", fontsize=10)
    ax.legend(fontsize=8)
    return figs.save(fig, f"similarity-{result.lab}", f"closest match per submission in {result.lab}")


# ---------------------------------------------------------------- HTML

def esc(value) -> str:
    return html.escape(str(value), quote=True)


def _short(name: str, n: int = 28) -> str:
    name = str(name)
    return name if len(name) <= n else name[:n - 1] + "…"


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:0 20px 60px}
header{background:#263238;color:#fff;padding:18px 20px}header h1{margin:0 auto;max-width:1180px;font-size:24px}
header p{margin:4px auto 0;max-width:1180px;color:#cfd8dc}
nav{background:#eceff1;border-bottom:1px solid #cfd8dc;padding:8px 20px;position:sticky;top:0}
nav a{margin-right:18px;color:#1565c0;text-decoration:none;font-weight:600}
section{background:#fff;border:1px solid #e0e0e0;border-radius:6px;margin:18px 0;padding:6px 18px 16px}
h2{border-bottom:2px solid #eceff1;padding-bottom:4px}h3{margin-top:22px}
img{max-width:100%;height:auto;display:block;margin:8px 0}
table{border-collapse:collapse;margin:8px 0;font-size:14px}th,td{border-bottom:1px solid #e0e0e0;padding:4px 10px;
text-align:left;vertical-align:top}th{background:#f5f5f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
.stats{display:flex;flex-wrap:wrap;gap:10px}.stat{background:#eceff1;border-radius:6px;padding:8px 14px}
.stat b{display:block;font-size:22px}
.warn{background:#fff3e0;border-left:4px solid #ef6c00;padding:8px 12px}
.info{background:#e3f2fd;border-left:4px solid #1565c0;padding:8px 12px}
.badge{display:inline-block;border-radius:10px;padding:0 8px;margin:1px 4px 1px 0;font-size:12px;color:#111;
white-space:nowrap}
pre{white-space:pre-wrap;word-break:break-word;margin:0}
pre.msg{background:#f7f7f7;padding:4px 8px;border-radius:4px;font-size:13px}
details{margin:6px 0}summary{cursor:pointer}
ul.notes{margin:0;padding-left:18px}
.sbs{display:grid;grid-template-columns:1fr 1fr;gap:10px;margin:6px 0 14px}
.sbs>div{border:1px solid #e0e0e0;border-radius:4px;overflow:auto;max-height:600px}
.sbs h5{margin:0;padding:4px 8px;background:#f5f5f5;font-size:13px;position:sticky;top:0}
.sbs pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace;padding:4px 8px}
.hit{background:#fff59d;display:inline-block;width:100%}
.muted{color:#757575}
"""


def _feedback_links(workspace: Path) -> dict[tuple[str, str], str]:
    links = {}
    root = workspace / "feedback"
    for path in sorted(root.glob("*/*/*.html")) if root.is_dir() else []:
        key = (path.parent.parent.name, path.parent.name)
        links.setdefault(key, "/".join(quote(p) for p in path.relative_to(workspace).parts))
    return links


def _who(name: str, sid: str, lab: str, links: dict) -> str:
    href = links.get((sid, lab))
    text = esc(name) + (f' <span class="muted">({esc(sid)})</span>' if sid and sid != name else "")
    return f'<a href="{esc(href)}">{text}</a>' if href else text


def _side_by_side(pair: similarity.Pair, match: similarity.CellMatch) -> str:
    def column(name: str, source: str, hits: list[int]) -> str:
        hits_set = set(hits)
        lines = source.splitlines()
        shown = lines[:MAX_LINES]
        body = "\n".join(f'<span class="hit">{esc(line) or " "}</span>' if i in hits_set else esc(line)
                         for i, line in enumerate(shown))
        more = f"\n… {len(lines) - MAX_LINES} more lines" if len(lines) > MAX_LINES else ""
        return f"<div><h5>{esc(name)}</h5><pre>{body}{esc(more)}</pre></div>"

    return ('<div class="sbs">' + column(pair.a.student, match.source_a, match.lines_a)
            + column(pair.b.student, match.source_b, match.lines_b) + "</div>")


def _section_similarity(figs: Figures, results: dict[str, similarity.LabSimilarity], links: dict) -> str:
    out = ['<section id="shared"><h2>Shared answers</h2>',
           '<p class="info"><b>Evidence for a person to judge, never a penalty.</b> These pairs of submissions have '
           "answer cells that are near-identical once names, layout and comments are set aside (token winnowing as "
           "in MOSS: Schleimer, Wilkerson &amp; Aiken 2003). The released stubs, the notebook's given code and the "
           "course package are left out, and so are passages that a large part of the class shares. Honest students "
           "do sometimes write the same short code: read the cells side by side (shared lines are highlighted) and "
           "decide. Nothing here changed a grade.</p>",
           f'<p class="muted">Thresholds: an answer cell when ≥ {_pct(similarity.CELL_THRESHOLD)} of the smaller '
           f"answer's fingerprints are shared and the shared passages hold ≥ {similarity.MIN_TOKENS} code tokens "
           f"(≥ {similarity.MIN_WORDS} words for a written answer); the whole notebook at ≥ "
           f"{_pct(similarity.NOTEBOOK_THRESHOLD)} and ≥ {similarity.MIN_NOTEBOOK_TOKENS} tokens.</p>"]
    if not results:
        out.append("<p>No answers to compare.</p></section>")
        return "".join(out)
    for lab, result in results.items():
        out.append(f"<h3>{esc(lab)}: {len(result.pairs)} pair{'s' if len(result.pairs) != 1 else ''} "
                   f"among {result.submissions} submissions</h3>")
        out.append(fig_similarity(figs, result))
        if not result.pairs:
            out.append("<p>No pair above the thresholds.</p>")
            continue
        out.append("<table><tr><th>#</th><th>submission</th><th>submission</th><th>whole notebook</th>"
                   "<th>shared tokens</th><th>near-identical cells</th></tr>")
        for i, p in enumerate(result.pairs, 1):
            anchor = f"pair-{_anchor(lab)}-{i}"
            cells = ", ".join(f"{esc(m.grade_id)} ({_pct(m.score)})" for m in p.cells if m.grade_id in p.flagged)
            number = f'<a href="#{anchor}">{i}</a>' if i <= MAX_PAIRS else str(i)
            out.append(f"<tr><td class=n>{number}</td><td>{_who(p.a.student, p.a.sid, lab, links)}</td>"
                       f"<td>{_who(p.b.student, p.b.sid, lab, links)}</td><td class=n>{_pct(p.score)}</td>"
                       f"<td class=n>{p.tokens}</td><td>{cells or '<span class=muted>—</span>'}</td></tr>")
        out.append("</table>")
        for i, p in enumerate(result.pairs[:MAX_PAIRS], 1):
            anchor = f"pair-{_anchor(lab)}-{i}"
            out.append(f'<details id="{anchor}"{" open" if i <= 3 else ""}><summary><b>{i}.</b> '
                       f"{esc(p.a.student)} ↔ {esc(p.b.student)}: whole notebook {_pct(p.score)}, "
                       f"{len(p.flagged)} near-identical cell{'s' if len(p.flagged) != 1 else ''}</summary>")
            for m in p.cells:
                if m.grade_id in p.flagged:
                    out.append(f"<h4>{esc(m.grade_id)} — {_pct(m.score)} shared, {m.tokens} "
                               f"{'tokens' if m.kind == 'code' else 'words'}</h4>" + _side_by_side(p, m))
            rest = [m for m in p.cells if m.grade_id not in p.flagged]
            if rest:
                out.append("<details><summary>other cells with shared passages: "
                           + ", ".join(f"{esc(m.grade_id)} ({_pct(m.score)})" for m in rest) + "</summary>")
                for m in rest:
                    out.append(f"<h4>{esc(m.grade_id)} — {_pct(m.score)} shared</h4>" + _side_by_side(p, m))
                out.append("</details>")
            out.append("</details>")
        if len(result.pairs) > MAX_PAIRS:
            out.append(f"<p class=muted>Side by side: the first {MAX_PAIRS} pairs.</p>")
    out.append("</section>")
    return "".join(out)


def _anchor(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def build_report(workspace: Path, embed: bool = False, similar: bool = True) -> Path:
    """Write <workspace>/report.html (and its figures in report-figures/) from a grading run's workspace."""
    start = time.perf_counter()
    workspace = Path(workspace)
    run = read_run(workspace)
    figs = Figures(workspace / FIGURES, embed)
    links = _feedback_links(workspace)
    rows = run.rows
    labs = sorted({r["lab"] for r in rows} | {str(r["lab"]) for r in run.records})
    students = {r.get("sid") or r["student"] for r in rows}

    noted = []
    note_counts: Counter = Counter()
    for r in rows:
        kinds = [k for k in (note_kind(n) for n in r["notes"]) if k]
        if kinds:
            noted.append((r, kinds))
            note_counts.update(set(kinds))
    severity = {t: i for i, (t, _, _) in enumerate(NOTE_KINDS)}
    noted.sort(key=lambda x: (min(severity.get(k, 99) for k in x[1]), x[0]["lab"], str(x[0]["student"])))
    colours = {t: c for t, c, _ in NOTE_KINDS} | {"other": "#dddddd"}

    parts = []
    # overview
    run_s = run.summary.get("seconds")
    workers = run.summary.get("workers")
    scheduler = run.summary.get("scheduler")
    stats = [(len(rows), "submissions"), (len(students), "students"), (len(labs), "labs"),
             (len(noted), "with notes"), (len(run.problems), "run problems")]
    if run_s is not None:
        stats.append((f"{float(run_s) / 60:.1f} min", "grading time"))
    if workers:
        stats.append((workers, "workers" + (f" on {scheduler}" if scheduler else "")))
    parts.append('<section id="overview"><h2>Overview</h2><div class="stats">'
                 + "".join(f'<div class="stat"><b>{esc(v)}</b>{esc(k)}</div>' for v, k in stats) + "</div>")
    unsandboxed = [r for r in rows if r.get("sandboxed") is False]
    if unsandboxed:
        parts.append(f'<p class="warn">{len(unsandboxed)} submissions were graded <b>without the sandbox</b> '
                     "(--no-sandbox): their notebooks ran with this machine's permissions.</p>")
    if run.unreadable:
        parts.append('<p class="warn">Not readable, left out of this report: '
                     + ", ".join(esc(u) for u in run.unreadable) + "</p>")
    if rows:
        parts.append("<table><tr><th>lab</th><th>submissions</th><th>mean</th><th>median</th><th>full marks</th>"
                     "<th>zero</th><th>points left for a person</th></tr>")
        for lab in labs:
            lr = [r for r in rows if r["lab"] == lab]
            if not lr:
                continue
            sc = [float(r.get("auto_score") or 0) for r in lr]
            top = max(float(r.get("auto_max") or 0) for r in lr)
            manual = max(float(r.get("manual_max") or 0) for r in lr)
            full = sum(1 for s in sc if top and s >= top)
            parts.append(f"<tr><td>{esc(lab)}</td><td class=n>{len(lr)}</td>"
                         f"<td class=n>{statistics.fmean(sc):.1f} / {top:g}</td>"
                         f"<td class=n>{statistics.median(sc):g}</td><td class=n>{_pct(full / len(lr))}</td>"
                         f"<td class=n>{_pct(sum(1 for s in sc if s == 0) / len(lr))}</td>"
                         f"<td class=n>{manual:g} per submission</td></tr>")
        parts.append("</table>")
    parts.append("</section>")

    # scores
    parts.append('<section id="scores"><h2>Scores</h2>'
                 + (fig_scores(figs, rows) or "<p>No graded submissions.</p>")
                 + '<p class="muted">Automatic points only (the hidden checks); written answers are graded by hand in '
                 "formgrader.</p></section>")

    # mistakes
    parts.append('<section id="mistakes"><h2>Mistakes the class made</h2>'
                 "<p>Per hidden check, the share of the class that did not pass it, by kind; below each chart the "
                 "feedback messages the students got, grouped (messages that differ only in numbers or quoted text "
                 "are one group). A check that never ran (the notebook stopped before it, or the function was "
                 "missing) counts as not run.</p>")
    stats_by_lab = mistakes(run)
    if not stats_by_lab:
        parts.append("<p>No journaled results (results/*.json) to read the checks' verdicts from.</p>")
    for lab, checks in stats_by_lab.items():
        parts.append(f"<h3>{esc(lab)}</h3>" + fig_mistakes(figs, lab, checks))
        failing = sorted((c for c in checks if c.n_failed), key=lambda c: (-c.n_failed, c.name))
        for rank, c in enumerate(failing):
            share = _pct(c.n_failed / max(1, c.total))
            parts.append(f"<details{' open' if rank < 3 else ''}><summary><code>{esc(c.name)}</code> — {share} "
                         f"failed ({c.n_failed} of {c.total})</summary><table><tr><th>submissions</th><th>kind</th>"
                         "<th>message</th></tr>")
            for count, example, variants, kind in c.groups[:8]:
                shown = example if len(example) <= MAX_MESSAGE else example[:MAX_MESSAGE] + " …"
                extra = f'<div class="muted">{variants} variants</div>' if variants > 1 else ""
                parts.append(f"<tr><td class=n>{count} ({_pct(count / max(1, c.total))})</td>"
                             f'<td><span class="badge" style="background:{KINDS[kind]}33">{esc(kind)}</span></td>'
                             f'<td><pre class="msg">{esc(shown)}</pre>{extra}</td></tr>')
            if len(c.groups) > 8:
                rest = sum(g[0] for g in c.groups[8:])
                parts.append(f"<tr><td class=n>{rest}</td><td></td><td class=muted>{len(c.groups) - 8} more "
                             "kinds of message</td></tr>")
            parts.append("</table></details>")
        if not failing:
            parts.append("<p>Every submission passed every check.</p>")
    parts.append("</section>")

    # time
    distribution, slowest_fig, slowest = fig_time(figs, run)
    parts.append('<section id="time"><h2>Time</h2>' + (distribution or "<p>No timings.</p>") + slowest_fig)
    if slowest:
        parts.append("<details><summary>the slowest submissions in numbers (seconds)</summary><table><tr>"
                     "<th>submission</th><th>lab</th><th>total</th>"
                     + "".join(f"<th>{esc(label)}</th>" for label, _ in COSTS.values()) + "<th>worker</th></tr>")
        for r in slowest:
            cost = _cost_parts(r.get("timings") or {}, float(r.get("seconds") or 0))
            parts.append(f"<tr><td>{_who(r['student'], r['sid'], r['lab'], links)}</td><td>{esc(r['lab'])}</td>"
                         f"<td class=n>{float(r.get('seconds') or 0):.1f}</td>"
                         + "".join(f"<td class=n>{cost[k]:.1f}</td>" for k in COSTS)
                         + f"<td>{esc(r.get('worker', ''))}</td></tr>")
        parts.append("</table></details>")
    parts.append("</section>")

    # notes and problems
    parts.append('<section id="notes"><h2>Submissions with notes</h2>')
    if noted:
        parts.append(fig_notes(figs, note_counts))
        parts.append("<table><tr><th>submission</th><th>lab</th><th>score</th><th>kind</th><th>notes</th></tr>")
        for r, kinds in noted:
            badges = "".join(f'<span class="badge" style="background:{colours[k]}40;border:1px solid {colours[k]}">'
                             f"{esc(k)}</span>" for k in dict.fromkeys(kinds))
            notes = "".join(f"<li>{esc(n)}</li>" if note_kind(n) else f'<li class="muted">{esc(n)}</li>'
                            for n in r["notes"])
            who = _who(r["student"], r.get("sid") or "", r["lab"], links)
            parts.append(f"<tr><td>{who}</td><td>{esc(r['lab'])}</td>"
                         f"<td class=n>{float(r.get('auto_score') or 0):g} / {float(r.get('auto_max') or 0):g}</td>"
                         f"<td>{badges}</td><td><ul class=notes>{notes}</ul></td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p>No submission has a note beyond failed test cells.</p>")
    parts.append('</section><section id="problems"><h2>Problems of the run</h2>')
    if run.problems:
        parts.append("<p>Files the driver could not grade as a submission:</p><ul>"
                     + "".join(f"<li>{esc(p)}</li>" for p in run.problems) + "</ul>")
    else:
        parts.append("<p>None: every file in the submissions folder was graded.</p>")
    parts.append("</section>")

    # shared answers
    sim_seconds = 0.0
    if similar:
        t = time.perf_counter()
        results = similarity.shared_answers(workspace, run.records)
        sim_seconds = time.perf_counter() - t
        parts.append(_section_similarity(figs, results, links))

    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in
                  [("overview", "Overview"), ("scores", "Scores"), ("mistakes", "Mistakes"), ("time", "Time"),
                   ("notes", "Notes"), ("problems", "Problems"), ("shared", "Shared answers")]
                  if similar or a != "shared")
    page = ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'none'; "
            "img-src 'self' data: file:; style-src 'unsafe-inline'\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>Grading report: {esc(', '.join(labs))}</title><style>{CSS}</style></head><body>"
            f"<header><h1>Grading report</h1><p>{esc(', '.join(labs) or 'no labs')} · {len(rows)} submissions · "
            f"written {esc(time.strftime('%Y-%m-%d %H:%M'))} in {time.perf_counter() - start:.1f} s"
            f"{f' (shared answers {sim_seconds:.1f} s)' if similar else ''}</p></header>"
            f"<nav>{nav}</nav><main>{''.join(parts)}</main></body></html>\n")
    out = workspace / "report.html"
    out.write_text(page, encoding="utf-8")
    return out


def after_grading(workspace: Path) -> str:
    """For the grading driver, once summary.json is written: build the report and return one line to
    print. A report that cannot be built never costs the grades: the line then says why."""
    start = time.perf_counter()
    try:
        path = build_report(workspace)
    except Exception as err:  # noqa: BLE001 - the grades are written already; say what went wrong
        return f"report not written ({type(err).__name__}: {str(err)[:200]}); try `python -m grader.report {workspace}`"
    return f"report: {path} ({time.perf_counter() - start:.0f} s)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m grader.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("workspace", nargs="?", type=Path, default=REPO / "build" / "grading",
                        help="the grading workspace (default: build/grading)")
    parser.add_argument("--embed", action="store_true", help="put the figures inside the HTML file (one file to send)")
    parser.add_argument("--no-similarity", action="store_true", help="leave out the shared answers")
    args = parser.parse_args(argv)
    if not args.workspace.is_dir():
        raise SystemExit(f"{args.workspace} is not a grading workspace (run `python -m grader grade` first)")
    start = time.perf_counter()
    path = build_report(args.workspace, embed=args.embed, similar=not args.no_similarity)
    print(f"report: {path} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
