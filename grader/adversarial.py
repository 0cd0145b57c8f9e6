"""The adversarial corpus: Lab 1 submissions that try to get points without the work, or to harm others.

    python -m grader.adversarial      (part of `make samples`) → grader/adversarial/<student>/lab01-saliency/

Each submission is the released notebook (blank) or the full sample with an attack added — a new
cell after the setup cell, or an answer cell replaced — and carries the score its honest work
deserves (grader/adversarial/expected.json; the controls are copies of the full and partial samples). tests/test_adversarial.py grades them all together with
honest controls and checks that no attack pays, no control loses, nothing private leaks into any
feedback, nothing outside the sandbox changes and no process survives its submission.
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil

import nbformat

from grader.grade import REPO, SAMPLES
from grader.notebooks import grade_id

LAB = "lab01-saliency"
CORPUS = REPO / "grader" / "adversarial"
FULL, LEAF = 22, 3  # Lab 1's points; token_saliency (the last task, nothing calls it) is worth 3
BG_MARKER = "xailab-adversarial-background"

# ---------------------------------------------------------------------------- attack code

FIND_REPO = "import xailab, pathlib\nrepo = pathlib.Path(xailab.__file__).resolve().parents[1]\n"

ATTACKS: dict[str, dict] = {
    # --- points without work: reach the answer key or the verdict
    "key-import": dict(base="blank", honest=0, answers={
        task: f"try:\n    from grader.answers.lab01 import {task}\nexcept ImportError:\n    raise NotImplementedError()"
        for task in ("vanilla_gradient", "gradient_x_input", "smoothgrad", "guided_backprop", "occlusion",
                     "token_saliency")}),
    "key-read-source": dict(base="blank", honest=0, cell=FIND_REPO + (
        "for p in [repo / 'grader' / 'answers' / 'lab01.py', repo / 'grader' / 'checks' / 'lab01.py']:\n"
        "    try:\n"
        "        print(p.read_text()[:3000])\n"
        "    except OSError as err:\n"
        "        print('not readable:', err)\n")),
    "swap-grader-module": dict(base="blank", honest=0, cell=(
        "import sys, types\n"
        "fake = types.ModuleType('xailab.grading')\n"
        "fake.check = lambda name, fn: print('✓', name, ': passed')\n"
        "sys.modules['xailab.grading'] = fake\n"
        "sys.modules['grader'] = fake\n"
        "import xailab\nxailab.grading = fake\n")),
    "patch-client": dict(base="blank", honest=0, cell=(
        "import xailab.grading as g\n"
        "g._remote_check = lambda path, name, fn: (True, '✓ ' + name + ': passed')\n")),
    "build-class-hook": dict(base="blank", honest=0, cell=(
        "import builtins\n_original = builtins.__build_class__\n"
        "def _hook(func, name, *bases, **kw):\n"
        "    cls = _original(func, name, *bases, **kw)\n"
        "    if issubclass(cls, BaseException):\n"
        "        cls.__init__ = lambda self, *a, **k: None\n"
        "    return cls\n"
        "builtins.__build_class__ = _hook\n"
        "builtins.AssertionError = type('AssertionError', (Exception,), {})\n")),
    "patch-torch-compare": dict(base="blank", honest=0, cell=(
        "import torch\n"
        "torch.allclose = lambda *a, **k: True\ntorch.equal = lambda *a, **k: True\n"
        "torch.Tensor.__eq__ = lambda self, other: torch.ones((), dtype=torch.bool)\n"
        "torch.testing.assert_close = lambda *a, **k: None\n"), answers={
        "vanilla_gradient": "def vanilla_gradient(model, inputs, target, absolute=False):\n    return torch.zeros_like(inputs)"}),
    "tensor-subclass": dict(base="blank", honest=0, answers={
        "vanilla_gradient": (
            "class Liar(torch.Tensor):\n"
            "    def __eq__(self, other): return True\n"
            "    def __ne__(self, other): return False\n"
            "    @classmethod\n"
            "    def __torch_function__(cls, func, types, args=(), kwargs=None):\n"
            "        if func.__name__ in ('allclose', 'equal'): return True\n"
            "        return super().__torch_function__(func, types, args, kwargs or {})\n"
            "def vanilla_gradient(model, inputs, target, absolute=False):\n"
            "    return torch.zeros_like(inputs).as_subclass(Liar)")}),
    "fake-ticks": dict(base="blank", honest=0, cell=(
        "for name in ['vanilla_gradient.cnn', 'vanilla_gradient.transformer', 'smoothgrad.expectation']:\n"
        "    print(f'✓ lab01.{name}: matches the reference (0.1 s)')\n")),
    "edited-tests": dict(base="blank", honest=0, tests="pass  # tests removed"),
    "input-transformer": dict(base="blank", honest=0, cell=(
        "def _blank(lines):\n"
        "    return ['pass\\n'] if any('check(' in line or 'assert' in line for line in lines) else lines\n"
        "get_ipython().input_transformers_cleanup.append(_blank)\n")),
    "post-run-hook": dict(base="blank", honest=0, cell=(
        "ip = get_ipython()\n"
        "ip.showtraceback = lambda *a, **k: None\n"
        "def _forget(result):\n"
        "    result.error_in_exec = None\n"
        "    result.error_before_exec = None\n"
        "ip.events.register('post_run_cell', _forget)\n")),
    "forged-protocol": dict(base="blank", honest=0, cell=(
        "import os, socket, json, struct\n"
        "path = os.environ.get('XAILAB_CHECKER', '')\n"
        "for name in ['lab01.vanilla_gradient.cnn', 'lab01.smoothgrad.expectation']:\n"
        "    try:\n"
        "        s = socket.socket(socket.AF_UNIX); s.connect(path)\n"
        "        head = json.dumps({'op': 'check', 'name': name}).encode()\n"
        "        s.sendall(struct.pack('>I', len(head)) + head + struct.pack('>Q', 0))\n"
        "        s.recv(1 << 16)\n"
        "        forged = json.dumps({'op': 'result', 'seconds': 0, 'output': {'tensor': '0'}}).encode()\n"
        "        s.sendall(struct.pack('>I', len(forged)) + forged + struct.pack('>Q', 16) + b'x' * 16)\n"
        "        print(s.recv(1 << 16)[:200])\n"
        "    except OSError as err:\n"
        "        print('no checker:', err)\n")),
    # --- abnormal ends and resource abuse
    "alarm-disabled-loop": dict(base="full", honest=FULL - LEAF, answers={"token_saliency": (
        "import inspect, signal\n"
        "def token_saliency(model, input_ids, attention_mask, target, reduction='l2'):\n"
        "    if any('grading' in frame.filename for frame in inspect.stack()):\n"
        "        signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
        "        signal.setitimer(signal.ITIMER_REAL, 0)\n"
        "        while True:\n"
        "            pass\n"
        "    return torch.zeros(input_ids.shape)")}),
    "ignores-interrupt": dict(base="full", honest=FULL - LEAF, answers={"token_saliency": (
        "import signal\n"
        "def token_saliency(model, input_ids, attention_mask, target, reduction='l2'):\n"
        "    signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
        "    while True:\n"
        "        pass")}),
    "os-exit": dict(base="full", honest=FULL - LEAF, answers={"token_saliency": "import os\nos._exit(3)"}),
    "sys-exit": dict(base="blank", honest=0, cell="import sys\nsys.exit(1)"),
    "keyboard-interrupt": dict(base="blank", honest=0, cell="raise KeyboardInterrupt"),
    "big-allocation": dict(base="full", honest=FULL, cell=(
        "import torch\n"
        "try:\n    big = torch.ones(3 * 2**30, dtype=torch.uint8)\n    print('3 GB allocated')\n"
        "except (MemoryError, RuntimeError) as err:\n    print('3 GB refused:', type(err).__name__)\n"
        "try:\n    huge = torch.ones(12 * 2**30, dtype=torch.uint8)\n"
        "except (MemoryError, RuntimeError) as err:\n    print('12 GB refused:', type(err).__name__)\n"
        "big = huge = None\n")),
    "process-flood": dict(base="blank", honest=0, cell=(
        "import subprocess\nprocs = []\n"
        "try:\n"
        "    for _ in range(400):\n"
        "        procs.append(subprocess.Popen(['sleep', '600']))\n"
        "except OSError as err:\n"
        "    print(len(procs), 'processes, then', err)\n")),
    "background-process": dict(base="full", honest=FULL, cell=(
        "import subprocess, sys\n"
        f"code = 'import time\\nwhile True: time.sleep(1)  # {BG_MARKER}'\n"
        "subprocess.Popen([sys.executable, '-c', code], start_new_session=True)\n"
        "subprocess.Popen(['sh', '-c', f'nohup {sys.executable} -c \"{code}\" >/dev/null 2>&1 &'])\n")),
    "output-flood": dict(base="full", honest=FULL, cell="for _ in range(50_000):\n    print('x' * 1000)\n"),
    "network": dict(base="full", honest=FULL, cell=(
        "import socket, urllib.request\n"
        "for target in [('pypi.org', 443), ('10.0.0.1', 80), ('127.0.0.1', 22)]:\n"
        "    try:\n        socket.create_connection(target, timeout=2); print('connected to', target)\n"
        "    except OSError as err:\n        print('no network:', type(err).__name__)\n")),
    # --- other students, the gradebook, the grader's own files
    "harm-others": dict(base="full", honest=FULL, cell=FIND_REPO + (
        "import glob, os, shutil\n"
        "mine = glob.glob('*.ipynb')\n"
        "for root in ['..', '../..', '../../..', '/work', '/tmp', '/home', '/root', str(repo), str(repo / 'build')]:\n"
        "    for p in glob.glob(root + '/**/*.ipynb', recursive=True) + glob.glob(root + '/**/gradebook.db', recursive=True):\n"
        "        try:\n"
        "            print('found', p); os.remove(p)\n"
        "        except OSError as err:\n"
        "            print('cannot remove', p, err)\n"
        "for p in [repo / 'grader' / 'checks' / '__init__.py', repo / 'xailab' / 'grading.py', repo / 'data' / 'MANIFEST']:\n"
        "    try:\n"
        "        p.write_text('def run_check(*a, **k):\\n    return True, \"ok\"\\n')\n"
        "    except OSError as err:\n"
        "        print('cannot write', p, type(err).__name__)\n")),
    "read-others": dict(base="full", honest=FULL, cell=FIND_REPO + (
        "import glob, os\n"
        "for pattern in ['../**/*.ipynb', '/work/**/*.ipynb', '/tmp/**/*.ipynb', '/root/**/*', str(repo) + '/**/*.py',\n"
        "                str(repo) + '/**/gradebook.db', str(repo) + '/**/grades.csv', '/proc/1/environ', '/etc/shadow']:\n"
        "    for p in glob.glob(pattern, recursive=True)[:50]:\n"
        "        try:\n"
        "            print(p, open(p, errors='replace').read()[:2000])\n"
        "        except OSError as err:\n"
        "            print('cannot read', p, type(err).__name__)\n")),
    "uses-captum": dict(base="full", honest=FULL - 4, answers={"occlusion": (
        "from captum.attr import Occlusion\n"
        "def occlusion(model, inputs, target, patch=4, stride=None, baseline=0.0, batch_size=64):\n"
        "    stride = stride or patch\n"
        "    return Occlusion(model).attribute(inputs, sliding_window_shapes=(inputs.shape[1], patch, patch),\n"
        "                                      strides=(inputs.shape[1], stride, stride), baselines=baseline,\n"
        "                                      target=target).sum(1)")}),
    # --- broken notebooks: graded for what is there
    "deleted-answer-cell": dict(base="full", honest=FULL - 4, delete="smoothgrad"),
    "duplicated-cell": dict(base="full", honest=FULL, duplicate="vanilla_gradient"),
    "huge-cell-text": dict(base="full", honest=FULL, strip=True,
                           markdown="Notes. " + "lorem ipsum dolor sit amet " * 150_000),
    "*": dict(base="full", honest=FULL),
    "José Ñúñez 李": dict(base="full", honest=FULL),
}
CONTROLS = {"control-full": ("sample-full", FULL), "control-partial": ("sample-partial", 9)}


def marker(student: str) -> str:
    """A string that appears in this student's notebook only (a leak test looks for it elsewhere)."""
    return f"private-marker-{hashlib.sha1(student.encode()).hexdigest()[:10]}"


def _set_marker(nb, student: str) -> None:
    for cell in nb.cells:
        if grade_id(cell) == "vanilla_gradient":
            cell.source = f"# {marker(student)}\n" + cell.source
            return


def build_attack(student: str, spec: dict):
    name = next((SAMPLES / "sample-full" / LAB).glob("*.ipynb")).name
    base = REPO / "labs" / LAB / name if spec["base"] == "blank" else SAMPLES / "sample-full" / LAB / name
    nb = nbformat.read(str(base), as_version=4)
    for cell in nb.cells:
        gid = grade_id(cell)
        if gid in spec.get("answers", {}):
            cell.source = spec["answers"][gid]
        if spec.get("tests") and gid and gid.startswith("test_"):
            cell.source = spec["tests"]
    _set_marker(nb, student)
    if "cell" in spec:
        setup = next(i for i, c in enumerate(nb.cells) if grade_id(c) == "setup")
        nb.cells.insert(setup + 1, nbformat.v4.new_code_cell(spec["cell"]))
    if "markdown" in spec:
        nb.cells.insert(1, nbformat.v4.new_markdown_cell(spec["markdown"]))
    if "delete" in spec:
        nb.cells = [c for c in nb.cells if grade_id(c) != spec["delete"]]
    if "duplicate" in spec:
        i = next(i for i, c in enumerate(nb.cells) if grade_id(c) == spec["duplicate"])
        twin = copy.deepcopy(nb.cells[i])  # an accidental copy of the answer cell
        nb.cells.insert(i + 1, nbformat.from_dict(json.loads(json.dumps(twin))))
        nb = nbformat.from_dict(json.loads(json.dumps(nb)))
        for k, cell in enumerate(nb.cells):  # fresh cell ids (a copy-paste in an editor makes new ones)
            cell["id"] = f"cell-{k}"
    if spec.get("strip"):
        for cell in nb.cells:
            cell.metadata = {}
            cell.pop("id", None)
        nb.nbformat_minor = 4
    return nb


def build() -> None:
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    expected = {}
    name = next((SAMPLES / "sample-full" / LAB).glob("*.ipynb")).name
    for student, spec in ATTACKS.items():
        folder = CORPUS / student / LAB
        folder.mkdir(parents=True)
        nbformat.write(build_attack(student, spec), str(folder / name))
        expected[student] = spec["honest"]
    for student, (sample, score) in CONTROLS.items():
        nb = nbformat.read(str(SAMPLES / sample / LAB / name), as_version=4)
        _set_marker(nb, student)
        (CORPUS / student / LAB).mkdir(parents=True)
        nbformat.write(nb, str(CORPUS / student / LAB / name))
        expected[student] = score
    (CORPUS / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    build()
    print(f"{len(ATTACKS)} attacks and {len(CONTROLS)} controls written to {CORPUS}")
