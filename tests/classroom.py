"""A synthetic class for the report and similarity tests: a grading workspace as the driver leaves it
(summary.json, results/*.json, autograded notebooks, feedback, release) without running the grader.

Every student writes their own answers (random statements drawn from the course's own Python code,
so no two students share more than a line or two by chance); `copies` plants pairs whose second
student renamed the first one's variables, changed the layout and the comments.
"""
from __future__ import annotations

import ast
import base64
import copy
import io
import json
import random
import re
import tokenize
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
LABS = ["lab01-saliency", "lab02-cam"]
INJECTION = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def statement_pool() -> list[str]:
    """Single-line statements from the course's code (answers, mutants, checks, xailab)."""
    pool = set()
    for folder in ("grader/answers", "grader/mutants", "grader/checks", "xailab"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for line in path.read_text().splitlines():
                line = line.strip()
                if not 20 <= len(line) <= 100 or line.endswith((":", ",", "(", "[", "{", "\\")) or line.startswith(
                        ("#", "def ", "class ", "return", "@", "import", "from", '"', "'")):
                    continue
                try:
                    tree = ast.parse(line)
                except SyntaxError:
                    continue
                if len(tree.body) == 1 and isinstance(tree.body[0], (ast.Assign, ast.Expr, ast.AugAssign)):
                    pool.add(line)
    return sorted(pool)


WORDS = ("the model gradient saliency map pixel digit decoy patch corner class score input baseline noise "
         "smooth average window occlusion relevance layer attention token sentence shortcut training label "
         "shape value because while although therefore positive negative large small whole part image "
         "network explanation method sanity check random weights cascade evidence").split()


def written(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 60))).capitalize() + "."


def disguise(source: str, rng: random.Random) -> str:
    """What a copier does: rename every name the code binds itself (variables, parameters, functions),
    change the spacing and the comments, add blank lines."""
    try:
        tree = ast.parse(source)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (SyntaxError, tokenize.TokenError, IndentationError):
        return source
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    bound |= {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
    bound |= {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
    out, names, previous = [], {}, None
    for tok in tokens:
        text = tok.string
        if tok.type == tokenize.NAME and text in bound and (previous is None or previous.string != "."):
            text = names.setdefault(text, f"{rng.choice(WORDS)}_{len(names)}")
        elif tok.type == tokenize.COMMENT:
            text = "# " + rng.choice(WORDS)
        out.append(tok._replace(string=text))
        previous = tok
    lines = []
    for line in tokenize.untokenize(out).splitlines():
        line = line.replace(" = ", "=") if rng.random() < 0.5 else re.sub(r",(?=\S)", ", ", line)
        lines.append(line.rstrip() + (f"  # {rng.choice(WORDS)}" if rng.random() < 0.3 and line.strip() else ""))
        if rng.random() < 0.15:
            lines.append("")
    return "\n".join(lines) + "\n"


def answer(stub: str, rng: random.Random, pool: list[str]) -> str:
    body = "\n".join("    " + rng.choice(pool) for _ in range(rng.randint(8, 20)))
    return stub.replace("    # YOUR CODE HERE\n    raise NotImplementedError()", body)


def lab_checks(lab: str) -> list[str]:
    from grader.report import lab_checks as checks

    return checks(lab)


def make_workspace(root: Path, students: int = 12, labs: list[str] = LABS, copies: int = 1, seed: int = 0,
                   odd: bool = True) -> dict:
    """Write a grading workspace for `students` students × `labs`; returns what was planted."""
    rng = random.Random(seed)
    pool = statement_pool()
    planted = {"copies": {}, "checks": {}}
    rows, problems = [], ["stray.txt: not a student folder, zip archive or notebook (ignored)",
                          f"student 'x{INJECTION}': no notebook in the submission"]
    names = [f"student{i:03d}" for i in range(students)]
    if odd:
        names[1] = f"Zoë {INJECTION}"  # an odd name, with HTML in it
    sids = {n: (n if re.fullmatch(r"[A-Za-z0-9_-]+", n) else f"student-odd-{i}") for i, n in enumerate(names)}
    for lab in labs:
        release_dir = REPO / "labs" / lab
        (root / "release" / lab).mkdir(parents=True, exist_ok=True)
        releases = {}
        for path in sorted(release_dir.glob("*.ipynb")):
            (root / "release" / lab / path.name).write_bytes(path.read_bytes())
            releases[path.name] = json.loads(path.read_text())
        checks = lab_checks(lab)
        hard = {c: rng.random() * 0.6 for c in checks}  # how often each check is failed
        planted["checks"][lab] = hard
        answers_by_student = {}
        for i, name in enumerate(names):
            sid = sids[name]
            skill = rng.random()
            nbs = {}
            for fname, rel in releases.items():
                nb = copy.deepcopy(rel)
                for cell in nb["cells"]:
                    if not cell["metadata"].get("nbgrader", {}).get("solution"):
                        continue
                    if cell["cell_type"] == "code" and rng.random() < 0.9:
                        cell["source"] = answer("".join(cell["source"]), rng, pool)
                    elif cell["cell_type"] == "markdown":
                        cell["source"] = written(rng)
                nbs[fname] = nb
            answers_by_student[name] = nbs
            if i >= students - copies:  # copies of the student `copies` places before
                original = names[i - copies]
                nbs = copy.deepcopy(answers_by_student[original])
                for nb in nbs.values():
                    for cell in nb["cells"]:
                        if cell["metadata"].get("nbgrader", {}).get("solution") and cell["cell_type"] == "code":
                            cell["source"] = disguise("".join(cell["source"]), rng)
                answers_by_student[name] = nbs
                planted["copies"].setdefault(lab, []).append((sids[original], sid))
            folder = root / "autograded" / sid / lab
            folder.mkdir(parents=True, exist_ok=True)
            encoded = {}
            for fname, nb in nbs.items():
                data = json.dumps(nb, indent=1, ensure_ascii=False).encode()
                (folder / fname).write_bytes(data)
                encoded[fname] = base64.b64encode(data).decode()
                fb = root / "feedback" / sid / lab
                fb.mkdir(parents=True, exist_ok=True)
                (fb / fname.replace(".ipynb", ".html")).write_text("<html><body>feedback</body></html>")
            verdicts = []
            for check in checks:
                if rng.random() < 0.05 * (1 - skill):
                    continue  # never ran
                fails = rng.random() < hard[check] * (1.2 - skill)
                task = check.split(".")[1]
                if not fails:
                    message = f"✓ {check}: matches the reference ({rng.random():.1f} s)"
                else:
                    message = rng.choice([
                        f"✗ {check}: wrong values on mnist-cnn: max |difference| {rng.random():.3g} at example "
                        f"{rng.randint(0, 7)} (tolerance 1e-4). Likely cause: the score is taken after the softmax.",
                        f"✗ {check}: {task} raised ValueError: shapes ({rng.randint(1, 9)}, 28) and (3,) do not match",
                        f"✗ {check}: {task} did not finish within its time budget of {rng.randint(10, 30)} s",
                        f"✗ {check}: {task} raised RuntimeError: {INJECTION}",
                    ])
                verdicts.append({"name": check, "passed": not fails, "message": message,
                                 "seconds": round(rng.uniform(0.1, 3), 2),
                                 "seconds_student": round(rng.uniform(0, 1), 2)})
            notes = []
            passed = sum(1 for v in verdicts if v["passed"])
            failed_cells = len(checks) - passed
            r = rng.random()
            if r < 0.08:
                notes.append("nbgrader metadata missing on 25 cells: restored 25 by matching the released notebook")
            elif r < 0.14:
                notes.append(f"NameError in answer cell {rng.choice(checks).split('.')[1]}")
            elif r < 0.17:
                notes.append("tampering suspected: 2 test cells reported passing in the notebook, but the checker "
                             "recorded a failure or nothing: test_smoothgrad_expectation, test_occlusion_cnn (scored 0)")
            elif r < 0.2:
                notes.append("nbgrader autograde ended abnormally (exit status -9)")
            if name == names[1]:
                notes.append(f"answer cell occlusion imports {INJECTION}: libraries that implement the methods are "
                             "not allowed in answers")
            if failed_cells:
                notes.append(f"{failed_cells} test cells failed: " + ", ".join(c.split(".")[1] for c in checks[:3]))
            parts = {"start": rng.uniform(1, 3), "imports": rng.uniform(1, 4), "model_loads": rng.uniform(0.5, 3),
                     "student_code_in_checks": rng.uniform(0.2, 6) * (5 if i == 3 else 1),
                     "preparing_checks": rng.uniform(0, 1), "checker_and_transfer": rng.uniform(0.5, 2),
                     "other_cells": rng.uniform(0.1, 1)}
            seconds = round(sum(parts.values()) + rng.uniform(0.5, 2), 2)
            timings = {"total": seconds, **{k: round(v, 2) for k, v in parts.items()}}
            auto_max = 2.0 * len(checks)
            score = 2.0 * passed
            grades = [{"notebook": next(iter(releases)).removesuffix(".ipynb"), "cell": f"test_{c}",
                       "auto_score": 2.0 if any(v["name"] == c and v["passed"] for v in verdicts) else 0.0,
                       "max_score": 2.0, "needs_manual_grade": False} for c in checks]
            record = {"student": name, "sid": sid, "lab": lab, "notes": notes, "seconds": seconds, "grades": grades,
                      "autograded": encoded, "verdicts": verdicts, "timings": timings,
                      "worker": f"node{i % 2}:{1000 + i}", "key": "0" * 16}
            (root / "results").mkdir(exist_ok=True)
            (root / "results" / f"{sid}--{lab}.json").write_text(json.dumps(record) + "\n")
            rows.append({"student": name, "lab": lab, "auto_score": score, "auto_max": auto_max, "manual_max": 8.0,
                         "seconds": seconds, "notes": notes, "sandboxed": True, "sid": sid})
    (root / "summary.json").write_text(json.dumps({"rows": rows, "problems": problems, "workers": 2,
                                                   "scheduler": None, "seconds": 1234.5}, indent=1,
                                                  ensure_ascii=False))
    planted["names"] = names
    planted["sids"] = sids
    return planted
