"""Shared answers (grader/similarity.py): copies are found through renaming, reformatting and new
comments; honest implementations, the released stubs and the course's given code are not flagged."""
import copy
import random

import nbformat
import pytest

from grader import similarity
from grader.similarity import Submission, answer_cells, code_tokens, compare_lab, fingerprints, winnow

LAB = "lab01-saliency"

STUB_HEAD = '''def occlusion(model, inputs, target, patch=4, stride=None, baseline=0.0, batch_size=64):
    """Occlusion map: the mean drop of the target score over the windows that cover each pixel.

    inputs: (B, C, H, W). target: int or LongTensor (B,). patch: the window's side in pixels.
    stride: the step between windows; None means stride = patch (windows that tile the image).
    Windows start at 0, stride, 2·stride, … as long as they fit; a pixel no window covers gets 0.
    baseline: the value written into the window, in every channel. batch_size: at most this many
    occluded images per forward pass. Returns (B, H, W). Leaves model and inputs unchanged.
    """
'''

# one student's occlusion: all windows at once, chunked
OCCLUSION_A = STUB_HEAD + '''    stride = stride or patch
    b, c, h, w = inputs.shape
    x = inputs.detach()
    idx = torch.as_tensor(target).reshape(-1).expand(b)
    with torch.no_grad():
        base = model(x).gather(1, idx[:, None]).squeeze(1)
        masks = []
        for top in range(0, h - patch + 1, stride):
            for left in range(0, w - patch + 1, stride):
                m = torch.zeros(h, w, dtype=torch.bool)
                m[top:top + patch, left:left + patch] = True
                masks.append(m)
        masks = torch.stack(masks)
        drops = []
        per = max(1, batch_size // b)
        for i in range(0, len(masks), per):
            chunk = masks[i:i + per, None, None]
            occluded = torch.where(chunk, torch.tensor(baseline), x[None]).reshape(-1, c, h, w)
            scores = model(occluded).gather(1, idx.repeat(len(chunk))[:, None]).reshape(-1, b)
            drops.append(base[None] - scores)
        drops = torch.cat(drops)
        total = torch.einsum("kb,khw->bhw", drops, masks.float())
        count = masks.sum(0).float()
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
'''

# the same code with every local name changed, another layout (a formatter's line breaks and
# trailing commas, other spacing) and other comments
OCCLUSION_A_DISGUISED = STUB_HEAD + '''    # step between windows
    step = stride or patch
    n_img, n_ch, height, width = inputs.shape
    images = inputs.detach()   # never touch the caller's tensor
    labels = torch.as_tensor(target).reshape(-1).expand(n_img)
    with torch.no_grad():
        # score without occlusion
        reference = model(images).gather(1, labels[:, None]).squeeze(1)
        windows = []
        for row in range(0, height - patch + 1, step):
            for col in range(0, width - patch + 1, step):
                win = torch.zeros(height, width, dtype=torch.bool)
                win[row:row+patch, col:col+patch] = True
                windows.append(win)
        windows = torch.stack(windows)
        losses = []
        chunk_size = max(1, batch_size//n_img)
        for start in range(0, len(windows), chunk_size):
            part = windows[start:start+chunk_size, None, None]
            hidden = torch.where(
                part,
                torch.tensor(baseline),
                images[None],
            ).reshape(-1, n_ch, height, width)
            out = model(hidden).gather(
                1,
                labels.repeat(len(part))[:, None],
            ).reshape(-1, n_img)
            losses.append(reference[None] - out)
        losses = torch.cat(losses)
        summed = torch.einsum('kb,khw->bhw', losses, windows.float())  # sum of drops per pixel
        counts = windows.sum(0).float()
    return torch.where(counts > 0, summed / counts.clamp(min=1), torch.zeros_like(summed))
'''

# an honest, different implementation of the same function: one window at a time, a coverage map
OCCLUSION_B = STUB_HEAD + '''    if stride is None:
        stride = patch
    B, C, H, W = inputs.shape
    t = target if torch.is_tensor(target) else torch.full((B,), int(target))
    t = t.reshape(-1).expand(B)
    heat = torch.zeros(B, H, W)
    cover = torch.zeros(H, W)
    with torch.no_grad():
        clean = model(inputs)[torch.arange(B), t]
        for i in range(0, H - patch + 1, stride):
            for j in range(0, W - patch + 1, stride):
                occ = inputs.clone()
                occ[:, :, i:i + patch, j:j + patch] = baseline
                drop = clean - model(occ)[torch.arange(B), t]
                heat[:, i:i + patch, j:j + patch] += drop[:, None, None]
                cover[i:i + patch, j:j + patch] += 1
    heat[:, cover == 0] = 0
    return heat / cover.clamp(min=1)
'''

SMOOTHGRAD_HEAD = '''def smoothgrad(model, inputs, target, n_samples=25, noise_level=0.15, absolute=False, batch_size=64,
               generator=None):
'''

SMOOTHGRAD_A = SMOOTHGRAD_HEAD + '''    x = inputs.detach()
    flat = x.flatten(1)
    sigma = (noise_level * (flat.max(1).values - flat.min(1).values)).view(-1, *[1] * (x.dim() - 1))
    total = torch.zeros_like(x)
    for _ in range(n_samples):
        noisy = x + torch.randn(x.shape, generator=generator) * sigma
        g = vanilla_gradient(model, noisy, target)
        total += g.abs() if absolute else g
    return total / n_samples
'''

SMOOTHGRAD_B = SMOOTHGRAD_HEAD + '''    b = inputs.shape[0]
    spread = inputs.reshape(b, -1)
    scale = noise_level * (spread.amax(dim=1) - spread.amin(dim=1))
    noise = torch.randn((n_samples, *inputs.shape), generator=generator)
    noise = noise * scale.reshape(1, b, *([1] * (inputs.dim() - 1)))
    samples = (inputs.detach().unsqueeze(0) + noise).flatten(0, 1)
    labels = torch.as_tensor(target).reshape(-1).expand(b).repeat(n_samples)
    parts = []
    for k in range(0, samples.shape[0], batch_size):
        parts.append(vanilla_gradient(model, samples[k:k + batch_size], labels[k:k + batch_size]))
    grads = torch.cat(parts).reshape(n_samples, *inputs.shape)
    if absolute:
        grads = grads.abs()
    return grads.mean(dim=0)
'''

WRITTEN = ("The decoy model looks at the grey patch in the top-left corner rather than at the digit: its "
           "gradient is large there, because in training the shade of the patch gave the label away.")
WRITTEN_EDITED = ("The decoy model looks at the gray patch in the top left corner rather than at the digit. Its "
                  "gradient is large there because, in training, the shade of the patch gave the label away!")
WRITTEN_OTHER = ("Saliency for the decoy network concentrates on a small square of pixels near one corner, "
                 "which means the classifier learned a shortcut instead of the shapes of the digits.")


@pytest.fixture(scope="module")
def release(repo):
    return nbformat.read(str(repo / "labs" / LAB / "lab01.ipynb"), as_version=4)


def notebook(release, answers: dict[str, str]):
    """A submission: the released notebook with some answer cells filled in."""
    nb = copy.deepcopy(release)
    for cell in nb.cells:
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid in answers:
            cell.source = answers[gid]
    return nb


def submission(name: str, nb) -> Submission:
    return Submission(name, name, LAB, answer_cells(nb))


def pairs_of(result):
    return {(p.a.sid, p.b.sid): p for p in result.pairs}


def test_a_disguised_copy_is_found(release):
    class_ = [submission("ann", notebook(release, {"occlusion": OCCLUSION_A, "q1_decoy": WRITTEN})),
              submission("bob", notebook(release, {"occlusion": OCCLUSION_A_DISGUISED, "q1_decoy": WRITTEN_EDITED})),
              submission("cat", notebook(release, {"occlusion": OCCLUSION_B, "q1_decoy": WRITTEN_OTHER}))]
    result = compare_lab(LAB, class_, [release])
    pairs = pairs_of(result)
    assert set(pairs) == {("ann", "bob")}, f"expected only ann/bob, got {sorted(pairs)}"
    pair = pairs[("ann", "bob")]
    cells = {m.grade_id: m for m in pair.cells}
    assert "occlusion" in pair.flagged and cells["occlusion"].score >= 0.95, cells["occlusion"]
    assert "q1_decoy" in pair.flagged, f"the edited written answer was not found: {cells.get('q1_decoy')}"
    # the stub's signature and docstring are given: the shared lines are the student's own
    assert 0 not in cells["occlusion"].lines_a, "the released def line counts as shared"
    assert len(cells["occlusion"].lines_b) >= 25, cells["occlusion"].lines_b
    assert pair.score >= 0.9
    assert result.nearest["cat"] < 0.3, result.nearest


def test_honest_implementations_are_not_flagged(release):
    class_ = [submission("ann", notebook(release, {"occlusion": OCCLUSION_A, "smoothgrad": SMOOTHGRAD_A})),
              submission("cat", notebook(release, {"occlusion": OCCLUSION_B, "smoothgrad": SMOOTHGRAD_B}))]
    result = compare_lab(LAB, class_, [release])
    assert not result.pairs, [(p.a.sid, p.b.sid, p.score, [(m.grade_id, m.score) for m in p.cells])
                              for p in result.pairs]
    assert result.nearest["ann"] < 0.3


def test_stubs_and_given_code_are_not_flagged(release):
    """Blank notebooks, and answers that paste the notebook's given code, share only the course's material."""
    def source(gid=None, index=None):
        return next(c.source for i, c in enumerate(release.cells)
                    if (gid and c.metadata.get("nbgrader", {}).get("grade_id") == gid) or i == index)

    plotting = source(index=12)  # a given cell that plots the student's maps
    stub = source("occlusion")
    indented = stub.replace("    raise NotImplementedError()", "    " + plotting.replace("\n", "\n    "))
    class_ = [submission("blank1", notebook(release, {})),
              submission("blank2", notebook(release, {})),
              submission("paste1", notebook(release, {"occlusion": indented, "guided_backprop": source("setup"),
                                                      "smoothgrad": stub + "\n" + source(index=3)})),
              submission("paste2", notebook(release, {"occlusion": indented, "guided_backprop": source("setup"),
                                                      "smoothgrad": stub + "\n" + source(index=3)}))]
    result = compare_lab(LAB, class_, [release])
    assert not result.pairs, [(p.a.sid, p.b.sid, p.score) for p in result.pairs]
    # the course's package is given too: code copied from xailab is not evidence
    plot_code = (similarity.REPO / "xailab" / "plot.py").read_text()
    class_ = [submission(f"s{i}", notebook(release, {"occlusion": plot_code})) for i in range(2)]
    assert not compare_lab(LAB, class_, [release]).pairs
    # ... but without the exclusions the same classes would look alike (the test can fail)
    assert compare_lab(LAB, class_, [], package=None).pairs
    assert compare_lab(LAB, [submission(s, notebook(release, {"guided_backprop": source("setup")}))
                             for s in ("a", "b")], [], package=None).pairs


def test_winnowing_guarantee():
    """Any shared run of k + w - 1 tokens yields a shared fingerprint; the selection is the rightmost minimum."""
    assert winnow([5, 3, 3, 7, 1, 9], 3) == {3: [2], 1: [4]}
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    for _ in range(50):
        shared = " ".join(rng.choice(words) for _ in range(similarity.CODE_K + similarity.CODE_W - 1))
        a = " ".join(rng.choice(words) for _ in range(30)) + " (" + shared + ") " + "x"
        b = "y = " + shared.replace(" ", " ") + " + " + " ".join(rng.choice(words) for _ in range(20))
        ta, tb = code_tokens(a, set(words)), code_tokens(b, set(words))
        assert fingerprints(ta).keys() & fingerprints(tb).keys()


def test_normalisation():
    a = code_tokens("def f(x, y):\n    # add\n    total = x + y  # comment\n    return total\n")
    b = code_tokens("def g(a,\n      b,):\n    s = (a +\n         b)\n\n    return s\n")
    assert a.tokens[:8] == ["def", "V", "(", "V", ",", "V", ")", ":"]
    assert [t for t in a.tokens if t not in "()"] == [t for t in b.tokens if t not in "()"]
    c = code_tokens("x = torch.zeros(3, 'a')  # hi\n", {"torch"})
    assert c.tokens == ["V", "=", "torch", ".", "zeros", "(", "N", ",", "S", ")", ";"]
    # magics are skipped and a syntax error still gives tokens
    assert code_tokens("%%time\ny = 1\n").tokens == ["V", "=", "N", ";"]
    broken = code_tokens("def f(:\n    return (1,\n")
    assert broken.tokens and "V" in broken.tokens


def test_deterministic(release):
    names = ["ann", "bob", "cat", "dan", "eve"]
    sources = [OCCLUSION_A, OCCLUSION_A_DISGUISED, OCCLUSION_B, OCCLUSION_A_DISGUISED, SMOOTHGRAD_A]

    def run(order):
        class_ = [submission(names[i], notebook(release, {"occlusion": sources[i]})) for i in order]
        r = compare_lab(LAB, class_, [release])
        return [(p.a.sid, p.b.sid, p.score, p.tokens, [(m.grade_id, m.score, m.tokens, m.lines_a, m.lines_b)
                                                      for m in p.cells]) for p in r.pairs], r.nearest

    first = run(range(5))
    assert first[0], "expected pairs among ann, bob and dan"
    assert {(a, b) for a, b, *_ in first[0]} == {("ann", "bob"), ("ann", "dan"), ("bob", "dan")}
    assert run([4, 2, 0, 3, 1]) == first
    assert run(range(5)) == first


def test_a_class_of_200_in_seconds(release):
    """200 students who each wrote their own answers, 5 of whom copied another student's notebook and
    disguised it: exactly those 5 pairs, found through the index in a few seconds."""
    import time

    from classroom import answer, disguise, statement_pool, written

    rng = random.Random(7)
    pool = statement_pool()
    class_ = []
    for i in range(200):
        answers = {}
        for cell in release.cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("solution"):
                answers[meta["grade_id"]] = (answer(cell.source, rng, pool) if cell.cell_type == "code"
                                             else written(rng))
        if i >= 195:  # copies of students 190–194
            original = class_[i - 5]
            answers = {gid: disguise(c.source, rng) if c.kind == "code" else c.source
                       for gid, c in original.cells.items()}
        class_.append(submission(f"s{i:03d}", notebook(release, answers)))
    start = time.process_time()
    result = compare_lab(LAB, class_, [release])
    seconds = time.process_time() - start
    found = {(p.a.sid, p.b.sid) for p in result.pairs}
    assert found == {(f"s{i:03d}", f"s{i + 5:03d}") for i in range(190, 195)}, sorted(found)
    assert all(p.score >= 0.8 and len(p.flagged) >= 5 for p in result.pairs), [(p.score, p.flagged) for p in result.pairs]
    assert sorted(result.nearest.values())[-11] < 0.3  # everybody else is far from everybody
    assert seconds < 30, f"{seconds:.1f} s of CPU for 200 submissions"
