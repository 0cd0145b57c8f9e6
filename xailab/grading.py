"""Hidden tests: the notebook's side of the autograder.

A hidden test cell is one line, ``check("lab01.smoothgrad.expectation", smoothgrad)``. While the
course's autograder grades a notebook, the verdict is made in a separate, trusted process (the
*checker*) that holds the reference answers. This module only serves the checker's calls of your
function — inputs in, outputs back as plain tensors and numbers — and prints the verdict it gets.
It holds no answers and decides nothing: scores come from the checker's own record.

Outside grading, ``check`` runs the check in-process when the instructor's ``grader`` package is
importable (instructors validating a solution notebook) and otherwise says politely that hidden
tests run only in the autograder.

The wire format (one codec for both sides):

* a frame is a JSON header (4-byte length) and a binary blob (8-byte length);
* checker → notebook: a pickled request (trusted code and data: toy models, inputs); course models
  travel by name and are loaded here from the model zoo;
* notebook → checker: never a pickle — a JSON tree whose tensors are stored in one safetensors blob.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import signal
import socket
import struct
import time
import warnings
from typing import Any, Callable

import torch

CHECKER_ENV = "XAILAB_CHECKER"  # path of the checker's socket, set inside the grading sandbox
MAX_HEADER = 1 << 20  # bytes of JSON in one frame
MAX_BLOB = 1 << 28  # bytes of tensors in one frame (256 MiB)
# torch threads while the checker calls a function (the answer key is timed with the same); the
# grading driver lowers it when several notebooks are graded at once on one machine
THREADS = int(os.environ.get("XAILAB_THREADS", "2"))


# ----------------------------------------------------------------------------- the hidden-test entry point

def check(name: str, fn: Callable) -> None:
    """Run hidden check `name` on `fn`: print the verdict; raise AssertionError when it fails."""
    socket_path = os.environ.get(CHECKER_ENV)
    if socket_path:
        passed, message = _remote_check(socket_path, name, fn)
    else:
        try:
            from grader.checks import run_check
        except ImportError:
            raise AssertionError("Hidden tests run only when the course's autograder grades your notebook; "
                                 "the visible tests above are yours to run.") from None
        passed, message = run_check(name, fn)
    print(message)
    if not passed:
        raise AssertionError(message) from None


def _remote_check(socket_path: str, name: str, fn: Callable) -> tuple[bool, str]:
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(socket_path)
    except OSError as err:
        return False, f"✗ {name}: the grader's checker could not be reached ({err})."
    with conn:
        send_frame(conn, {"op": "check", "name": name})
        while True:
            try:
                header, blob = recv_frame(conn)
            except (OSError, ValueError) as err:
                return False, f"✗ {name}: the connection to the grader's checker was lost ({err})."
            if header.get("op") == "verdict":
                return bool(header.get("passed")), str(header.get("message", ""))
            if header.get("op") != "call":
                return False, f"✗ {name}: unexpected message from the checker."
            reply, reply_blob = serve_call(fn, load_request(blob), float(header.get("budget_s", 10.0)))
            try:
                send_frame(conn, reply, reply_blob)
            except OSError as err:
                return False, f"✗ {name}: the connection to the grader's checker was lost ({err})."


# ----------------------------------------------------------------------------- framing

def send_frame(conn: socket.socket, header: dict, blob: bytes = b"") -> None:
    data = json.dumps(header).encode()
    conn.sendall(struct.pack(">I", len(data)) + data + struct.pack(">Q", len(blob)))
    if blob:
        conn.sendall(blob)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = conn.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ValueError("connection closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_frame(conn: socket.socket, max_header: int = MAX_HEADER, max_blob: int = MAX_BLOB) -> tuple[dict, bytes]:
    """One frame; raises ValueError when it is malformed or larger than the limits."""
    (n,) = struct.unpack(">I", _recv_exact(conn, 4))
    if n > max_header:
        raise ValueError(f"header of {n} bytes (limit {max_header})")
    header = json.loads(_recv_exact(conn, n))
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    (m,) = struct.unpack(">Q", _recv_exact(conn, 8))
    if m > max_blob:
        raise ValueError(f"payload of {m} bytes (limit {max_blob})")
    return header, _recv_exact(conn, m) if m else b""


# ----------------------------------------------------------------------------- values: notebook → checker

MAX_DEPTH, MAX_ITEMS = 8, 10_000


class Unsupported(TypeError):
    """A value that cannot travel to the checker (e.g. a model, a generator, a lambda)."""


def encode_value(value: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """A JSON tree for `value`, with its tensors (plain, contiguous, on the CPU) in a dict."""
    tensors: dict[str, torch.Tensor] = {}
    count = [0]

    def enc(v: Any, depth: int) -> Any:
        count[0] += 1
        if depth > MAX_DEPTH or count[0] > MAX_ITEMS:
            raise Unsupported("a result nested too deeply or with too many items")
        if isinstance(v, torch.Tensor):
            key = str(len(tensors))
            t = torch.Tensor.as_subclass(v.detach(), torch.Tensor).cpu()
            if t.is_complex() or t.is_quantized or t.is_sparse:
                raise Unsupported(f"a {t.dtype} tensor")
            tensors[key] = t.clone().contiguous()
            return {"tensor": key}
        if type(v).__module__ == "numpy":
            import numpy as np

            if isinstance(v, np.ndarray):
                return enc(torch.from_numpy(np.array(v)), depth)
            if isinstance(v, np.generic):
                return enc(v.item(), depth)
        if v is None or isinstance(v, (bool, str)):
            return v if not isinstance(v, str) else {"str": str(v)[:100_000]}
        if isinstance(v, int):
            return {"int": str(int(v))}
        if isinstance(v, float):
            return {"float": repr(float(v))}
        if isinstance(v, (list, tuple)):
            return {"tuple" if isinstance(v, tuple) else "list": [enc(x, depth + 1) for x in v]}
        if isinstance(v, dict):
            if not all(isinstance(k, (str, int)) for k in v):
                raise Unsupported("a dict whose keys are not strings or integers")
            return {"dict": [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in v.items()]}
        raise Unsupported(f"a {type(v).__name__}")

    return enc(value, 0), tensors


def pack_value(value: Any) -> tuple[Any, bytes]:
    from safetensors.torch import save

    tree, tensors = encode_value(value)
    return tree, (save(tensors) if tensors else b"")


def unpack_value(tree: Any, blob: bytes) -> Any:
    """The checker's strict decoder: plain tensors, numbers, strings, lists, tuples, dicts, None."""
    from safetensors.torch import load

    tensors = load(blob) if blob else {}
    count = [0]

    def dec(node: Any, depth: int) -> Any:
        count[0] += 1
        if depth > MAX_DEPTH + 1 or count[0] > 4 * MAX_ITEMS:
            raise ValueError("value nested too deeply")
        if node is None or isinstance(node, bool):
            return node
        if not isinstance(node, dict) or len(node) != 1:
            raise ValueError("malformed value")
        (kind, payload), = node.items()
        if kind == "tensor":
            return tensors[str(payload)]
        if kind == "str":
            return str(payload)
        if kind == "int":
            return int(str(payload)[:400])
        if kind == "float":
            return float(str(payload)[:64])
        if kind in ("list", "tuple"):
            items = [dec(x, depth + 1) for x in payload]
            return items if kind == "list" else tuple(items)
        if kind == "dict":
            return {dec(k, depth + 1): dec(v, depth + 1) for k, v in payload}
        raise ValueError(f"unknown value kind {kind!r}")

    return dec(tree, 0)


# ----------------------------------------------------------------------------- requests: checker → notebook

_ZOO_CACHE: dict[str, tuple[torch.nn.Module, dict]] = {}


def zoo_model(name: str) -> torch.nn.Module:
    """A course model for the checker's calls: loaded once, reloaded when a call changed it."""
    from xailab import load_model

    if name in _ZOO_CACHE:
        model, snapshot = _ZOO_CACHE[name]
        if _same_state(model, snapshot):
            return model
    model = load_model(name)
    _ZOO_CACHE[name] = (model, _snapshot(model))
    return model


class _RequestUnpickler(pickle.Unpickler):
    def persistent_load(self, pid):
        kind, name, path = pid
        if kind != "zoo":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        return zoo_model(name).get_submodule(path)


def load_request(blob: bytes) -> dict:
    """Unpickle a request from the checker (trusted); course models are referred to by name."""
    return _RequestUnpickler(io.BytesIO(blob)).load()


# ----------------------------------------------------------------------------- serving one call

class CallTimeout(BaseException):
    """Raised inside the student's function when its time budget is spent."""


@contextlib.contextmanager
def _budget(seconds: float):
    def on_alarm(signum, frame):
        raise CallTimeout()

    if not math.isfinite(seconds):
        yield
        return
    try:
        previous = signal.signal(signal.SIGALRM, on_alarm)
    except ValueError:  # not in the main thread: no limit here (the checker still has its own)
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def module_facts(module: torch.nn.Module) -> dict:
    """What a well-behaved method leaves as it found it: mode, hooks, requires_grad, .grad, structure."""
    return {
        "training": [m.training for m in module.modules()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                     + len(getattr(m, "_backward_pre_hooks", {})) for m in module.modules()),
        "requires_grad": [p.requires_grad for p in module.parameters()],
        "grads": sum(p.grad is not None for p in module.parameters()),
        "modules": [type(m).__name__ for m in module.modules()],
    }


def _snapshot(module: torch.nn.Module) -> dict:
    return {"facts": module_facts(module),
            "tensors": {k: v.detach().clone() for k, v in list(module.named_parameters()) + list(module.named_buffers())}}


def _values_changed(module: torch.nn.Module, snapshot: dict) -> bool:
    current = dict(list(module.named_parameters()) + list(module.named_buffers()))
    return current.keys() != snapshot["tensors"].keys() or not all(
        current[k].shape == v.shape and torch.equal(current[k].detach(), v) for k, v in snapshot["tensors"].items())


def _same_state(module: torch.nn.Module, snapshot: dict) -> bool:
    return module_facts(module) == snapshot["facts"] and not _values_changed(module, snapshot)


def _error_text(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else "")[:300]


def serve_call(fn: Callable, request: dict, budget_s: float) -> tuple[dict, bytes]:
    """Call `fn(**request["kwargs"])` under a time budget; return the reply header and blob.

    Request keys: args and kwargs; post (called as post(output, kwargs) after fn — e.g. to run a
    returned module on inputs, since modules cannot travel); observe (report side effects on the
    modules and tensors among the arguments; positional ones are named arg0, arg1, ...); seed.
    """
    args, kwargs = tuple(request.get("args", ())), request["kwargs"]
    observe = request.get("observe", False)
    named = {**{f"arg{i}": a for i, a in enumerate(args)}, **kwargs}
    modules = {k: v for k, v in named.items() if isinstance(v, torch.nn.Module)}
    tensors = {k: v for k, v in named.items() if isinstance(v, torch.Tensor)}
    before = {k: _snapshot(m) for k, m in modules.items()} if observe else {}
    originals = {k: v.detach().clone() for k, v in tensors.items()} if observe else {}
    threads, grad_enabled = torch.get_num_threads(), torch.is_grad_enabled()
    reply: dict = {"op": "result"}
    blob = b""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.set_num_threads(THREADS)
            torch.manual_seed(request.get("seed", 0))
            with _budget(budget_s):
                output = fn(*args, **kwargs)
                if request.get("post") is not None:
                    output = request["post"](output, kwargs)
            reply["seconds"] = time.perf_counter() - start
            reply["output"], blob = pack_value(output)
    except CallTimeout:
        reply = {"op": "result", "timeout": True, "seconds": time.perf_counter() - start}
    except Unsupported as err:
        reply = {"op": "result", "unsupported": str(err), "seconds": time.perf_counter() - start}
    except BaseException as err:  # noqa: BLE001 - the student's code may raise anything (even SystemExit)
        reply = {"op": "result", "error": {"type": type(err).__name__, "message": _error_text(err)},
                 "seconds": time.perf_counter() - start}
    finally:
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad_enabled)
    if observe:
        reply["facts"] = {
            "models": {k: {"before": before[k]["facts"], "after": module_facts(m),
                           "values_changed": _values_changed(m, before[k])}
                       for k, m in modules.items()},
            "inputs": {k: {"changed": not (v.shape == originals[k].shape and torch.equal(v.detach(), originals[k])),
                           "requires_grad": bool(v.requires_grad), "grad": v.grad is not None}
                       for k, v in tensors.items()},
        }
    if not math.isfinite(reply.get("seconds", 0.0)):
        reply["seconds"] = 0.0
    return reply, blob
