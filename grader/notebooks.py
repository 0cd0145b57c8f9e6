"""Reading submitted notebooks robustly, and restoring nbgrader metadata that an editor stripped.

nbgrader matches cells only by `metadata.nbgrader.grade_id`: a correct notebook whose metadata was
lost would score 0. We align the submission's cells with the released notebook (identical locked
cells anchor the alignment; answer cells are matched by type and similarity between anchors) and
copy the metadata back, recording what was done.
"""
from __future__ import annotations

import difflib
import json
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


def _key(cell) -> tuple[str, str]:
    return cell.get("cell_type", ""), "\n".join(line.rstrip() for line in cell.get("source", "").strip().splitlines())


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
    notes = [f"nbgrader metadata missing on {len(missing)} cells: restored {restored} by matching the released notebook"]
    lost = [grade_id(c) for c in wanted if grade_id(c) not in present]
    if lost:
        notes.append(f"cells not found (tests re-added by nbgrader, answers count as empty): {', '.join(lost)}")
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
