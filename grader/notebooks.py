"""Reading submitted notebooks robustly, and restoring nbgrader metadata that an editor stripped.

nbgrader matches cells only by `metadata.nbgrader.grade_id`: a correct notebook whose metadata was
lost would score 0. We align the submission's cells with the released notebook (identical locked
cells anchor the alignment; answer cells are matched by type and similarity between anchors) and
copy the metadata back, recording what was done.
"""
from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import nbformat


def read_notebook(path: Path) -> tuple[nbformat.NotebookNode | None, str | None]:
    """(notebook, None) or (None, why it could not be read)."""
    try:
        nb = nbformat.read(str(path), as_version=4)
    except (json.JSONDecodeError, nbformat.reader.NotJSONError) as err:
        return None, f"not a readable notebook (invalid JSON: {str(err)[:80]})"
    except Exception as err:  # noqa: BLE001 - any unreadable file is a recorded outcome
        return None, f"not a readable notebook ({type(err).__name__}: {str(err)[:80]})"
    return nb, None


def grade_id(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


SIMILARITY_CHARS = 2000  # cell text compared when aligning (megabytes of cell text must not slow the run)


def _key(cell) -> tuple[str, str]:
    source = cell.get("source", "")
    source = source if isinstance(source, str) else "".join(source)
    return cell.get("cell_type", ""), "\n".join(line.rstrip() for line in source.strip()[:SIMILARITY_CHARS].splitlines())


def restore_metadata(submission, release) -> list[str]:
    """Give submission cells back the nbgrader metadata of their released counterparts. Returns notes."""
    present = {grade_id(c) for c in submission.cells if grade_id(c)}
    wanted = [c for c in release.cells if grade_id(c)]
    missing = [c for c in wanted if grade_id(c) not in present]
    if not missing:
        return []
    sub_keys = [_key(c) for c in submission.cells]
    rel_keys = [_key(c) for c in release.cells]
    matcher = difflib.SequenceMatcher(a=rel_keys, b=sub_keys, autojunk=False)
    pairs: dict[int, int] = {}  # release index -> submission index
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pairs.update({i1 + k: j1 + k for k in range(i2 - i1)})
        elif tag == "replace":
            free = list(range(j1, j2))
            for i in range(i1, i2):
                candidates = [j for j in free if submission.cells[j].cell_type == release.cells[i].cell_type]
                if not candidates:
                    continue
                best = max(candidates, key=lambda j: difflib.SequenceMatcher(
                    a=rel_keys[i][1], b=sub_keys[j][1], autojunk=False).ratio())
                pairs[i] = best
                free = [j for j in free if j > best]  # keep the order
    restored = 0
    for i, j in pairs.items():
        gid = grade_id(release.cells[i])
        if gid and gid not in present and not grade_id(submission.cells[j]):
            submission.cells[j].metadata["nbgrader"] = json.loads(json.dumps(release.cells[i].metadata["nbgrader"]))
            present.add(gid)
            restored += 1
    if not restored:
        return []  # nothing stripped: the cells were deleted (reinsert_missing_cells says so)
    return [f"nbgrader metadata missing on {len(missing)} cells: restored {restored} by matching the released notebook"]


def deduplicate_grade_ids(submission, release) -> list[str]:
    """Keep one cell per grade_id: for answer cells the one the student wrote in (else the first),
    for test cells the first (nbgrader restores their text anyway). Returns notes."""
    released = {grade_id(c): _key(c)[1] for c in release.cells if grade_id(c)}
    seen: dict[str, list[int]] = {}
    for i, cell in enumerate(submission.cells):
        gid = grade_id(cell)
        if gid:
            seen.setdefault(gid, []).append(i)
    notes = []
    for gid, indices in seen.items():
        if len(indices) < 2:
            continue
        written = [i for i in indices if _key(submission.cells[i])[1] != released.get(gid)]
        keep = written[-1] if written else indices[0]
        for i in indices:
            if i != keep:
                submission.cells[i].metadata.pop("nbgrader", None)
        notes.append(f"{len(indices)} cells carried grade_id {gid}: graded the one at position {keep + 1}")
    return notes


def reinsert_missing_cells(submission, release) -> list[str]:
    """Put back released grade cells the submission lacks (a deleted answer cell is graded as the
    blank stub; a deleted test cell is restored), each after its predecessor in the release."""
    present = {grade_id(c) for c in submission.cells if grade_id(c)}
    position = {grade_id(c): i for i, c in enumerate(submission.cells) if grade_id(c)}
    missing, insert_at = [], 0
    for cell in release.cells:
        gid = grade_id(cell)
        if not gid:
            continue
        if gid in present:
            insert_at = max(insert_at, position[gid] + 1)
            continue
        copy = nbformat.from_dict(json.loads(json.dumps(cell)))
        if submission.get("nbformat_minor", 5) < 5:
            copy.pop("id", None)
        submission.cells.insert(insert_at, copy)
        for key in position:
            if position[key] >= insert_at:
                position[key] += 1
        position[gid] = insert_at
        insert_at += 1
        missing.append(gid)
    if not missing:
        return []
    return [f"{len(missing)} graded cells missing from the notebook were put back from the release "
            f"(a missing answer is graded as the blank stub): {', '.join(missing)}"]


FORBIDDEN = re.compile(r"^\s*(?:from|import)\s+(captum|zennit|lucent)\b", re.M)


def answer_imports(submission) -> list[str]:
    """Answer cells that import an explanation library: not available while grading."""
    notes = []
    for cell in submission.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        found = FORBIDDEN.findall(cell.get("source", "")) if meta.get("solution") and cell.cell_type == "code" else []
        if found:
            notes.append(f"answer cell {meta.get('grade_id')} imports {found[0]}: libraries that implement the methods "
                         "are not available while grading (implementations must be your own)")
    return notes


def execute(path: Path, timeout: int = 600, grading: bool = False):
    """Run a notebook top to bottom in its folder (as a student would); returns (notebook, seconds).

    Raises nbclient's CellExecutionError on the first failing cell."""
    import os
    import time

    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, XAILAB_GRADING="1" if grading else "0", MPLBACKEND="Agg", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute(env=env)  # the kernel gets this environment
    return nb, time.perf_counter() - start


def stderr_cells(nb) -> list[str]:
    """grade_ids (or indices) of code cells that wrote to stderr."""
    found = []
    for i, cell in enumerate(nb.cells):
        if any(o.get("output_type") == "stream" and o.get("name") == "stderr" for o in cell.get("outputs", [])):
            found.append(grade_id(cell) or f"cell {i}")
    return found
