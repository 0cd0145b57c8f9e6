"""Finding the submissions in the folder the instructor points the driver at.

Accepted layouts (nbgrader's `submitted` layout, and what LMS downloads look like):

    <folder>/<student>/<lab>/<notebook>.ipynb   the standard layout
    <folder>/<student>/<notebook>.ipynb         the lab folder level missing: the notebook's name tells the lab
    <folder>/<student>.zip                      one archive per student, holding either layout

Notebooks renamed by a re-download ("lab01 (1).ipynb", "lab01-2.ipynb") are matched to the released
notebook when the match is unambiguous. Everything not used — a notebook at the top level (no student
id), an unknown lab folder, an empty student folder, a stray file, a student present twice — is named
in `problems`, so no submission is ever dropped silently.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

MAX_UNZIPPED = 200 << 20  # bytes per archive


@dataclass
class Found:
    submissions: dict[tuple[str, str], dict[str, Path]] = field(default_factory=dict)  # (student, lab) → name → file
    notes: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # per submission
    problems: list[str] = field(default_factory=list)  # for the whole run


def _stem(name: str) -> str:
    """'lab01 (1).ipynb', 'lab01-2.ipynb', 'Lab01.IPYNB' → 'lab01'."""
    stem = re.sub(r"\.ipynb$", "", name, flags=re.I)
    return re.sub(r"(\s*\(\d+\)|[-_ ]\d+|[-_ ]copy)$", "", stem.strip(), flags=re.I).lower()


def _extract(archive: Path, into: Path) -> str | None:
    """Unpack a student's archive safely (no paths outside, bounded size); None or why it failed."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if sum(m.file_size for m in members) > MAX_UNZIPPED:
                return f"larger than {MAX_UNZIPPED >> 20} MB unpacked"
            for m in members:
                target = (into / m.filename).resolve()
                if not str(target).startswith(str(into.resolve()) + "/") or "__MACOSX" in m.filename:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(m))
    except (zipfile.BadZipFile, OSError, RuntimeError) as err:
        return f"not a readable zip archive ({type(err).__name__})"
    return None


def find(folder: Path, release: dict[str, list[str]], scratch: Path,
         unselected: dict[str, list[str]] | None = None) -> Found:
    """Submissions in `folder` for the labs in `release` (lab → its notebook file names). Notebooks of
    the course's `unselected` labs (same form; not asked for with --labs) are passed over in silence."""
    found = Found()
    skip = {_stem(name) for names in (unselected or {}).values() for name in names} | set(unselected or {})
    if not folder.is_dir():
        found.problems.append(f"{folder} is not a folder of submissions")
        return found
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    if not entries:
        found.problems.append(f"{folder} is empty: no submissions to grade")
    by_notebook = {_stem(name): (lab, name) for lab, names in release.items() for name in names}
    sources: dict[str, Path] = {}
    for entry in entries:
        if entry.name == "expected.json" or entry.name.startswith("."):
            continue
        if entry.is_dir():
            student, root = entry.name, entry
        elif entry.suffix.lower() == ".zip":
            student, root = entry.stem, scratch / "unzipped" / entry.stem
            problem = _extract(entry, root)
            if problem:
                found.problems.append(f"{entry.name}: {problem}; student {student!r} not graded")
                continue
            inner = [p for p in root.iterdir() if p.is_dir() and p.name not in release]
            if len(inner) == 1 and not list(root.glob("*.ipynb")) and not any((root / lab).is_dir() for lab in release):
                root = inner[0]  # the archive holds one folder (often named after the student)
        elif entry.suffix.lower() == ".ipynb":
            found.problems.append(f"{entry.name} is at the top level, so it has no student: put it in "
                                  "<student>/<lab>/ (it was not graded)")
            continue
        else:
            found.problems.append(f"{entry.name}: not a student folder, zip archive or notebook (ignored)")
            continue
        if student in sources:
            found.problems.append(f"student {student!r} appears twice ({sources[student].name} and {entry.name}): "
                                  f"graded {sources[student].name}")
            continue
        sources[student] = entry
        _student(found, student, root, release, by_notebook, skip)
    return found


def _student(found: Found, student: str, root: Path, release: dict[str, list[str]], by_notebook: dict,
             skip: set[str]) -> None:
    notebooks = [p for p in root.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts]
    for lab in release:  # a lab folder, even an empty one, is a submission (graded 0, noted)
        if (root / lab).is_dir():
            found.submissions.setdefault((student, lab), {})
            found.notes.setdefault((student, lab), [])
    if not notebooks:
        if not any(key[0] == student for key in found.submissions):
            found.problems.append(f"student {student!r}: no notebook in the submission")
        return
    for path in sorted(notebooks):
        rel = path.relative_to(root)
        lab = rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in release else None
        guess = by_notebook.get(_stem(path.name))
        if lab is None and guess is None:
            if rel.parts[0] in skip or _stem(path.name) in skip:
                continue  # a lab of the course that this run does not grade
            found.problems.append(f"student {student!r}: {rel} matches no lab of this course (not graded)")
            continue
        lab = lab or guess[0]
        names = release[lab]
        name = path.name if path.name in names else (guess[1] if guess and guess[0] == lab else
                                                     names[0] if len(names) == 1 else None)
        if name is None:
            found.problems.append(f"student {student!r}: {rel} matches no notebook of {lab} (not graded)")
            continue
        key = (student, lab)
        chosen = found.submissions.setdefault(key, {})
        notes = found.notes.setdefault(key, [])
        if name in chosen:
            notes.append(f"two notebooks for {name}: graded {chosen[name].name}, ignored {rel}")
            continue
        chosen[name] = path
        if rel.parts[0] != lab:
            notes.append(f"graded {rel} as {lab}/{name}")
        elif path.name != name:
            notes.append(f"graded {path.name} as {name}")
