"""Properties every explanation method has, shared by the labs' checks.

They observe the function under test only through `Student.call`: side effects are reported by
the kernel (`observe=True`), forward passes are counted by a wrapper module that travels with the
arguments, and whatever must be read after the call is turned into plain values by a `post`
function that runs where the function lives.
"""
from __future__ import annotations

import torch
from torch import nn

from grader.checks import Case, CheckFailed, as_tensor, assert_close
from grader.checks.student import StudentError


def side_effect_free(task: str, extra: dict | None = None, rtol: float = 1e-4, atol: float = 1e-6):
    """Model (mode, parameters, buffers, hooks, .grad) and tensor arguments unchanged; two calls agree."""

    def prop(fn, case: Case) -> None:
        kwargs = dict(case.kwargs, **(extra or {}))
        first = fn.call(kwargs, observe=True)
        check_no_side_effects(task, first.facts)
        second = fn(**kwargs)
        assert_same_output(second, first.output, task, f"{task} called twice on {case.description}", rtol, atol,
                           "The second call differs: are gradients accumulating between calls?")

    return prop


def assert_same_output(actual, expected, task: str, what: str, rtol: float, atol: float, hint: str = "") -> None:
    """`actual` agrees with `expected`, a tensor or a tuple/list of tensors: float tensors within the
    tolerance, bool and integer tensors (masks, token ids) exactly."""
    if isinstance(expected, (tuple, list)):
        if not isinstance(actual, (tuple, list)) or len(actual) != len(expected):
            raise CheckFailed(f"{what}: expected {len(expected)} results, got {type(actual).__name__}. {hint}".strip())
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same_output(a, e, task, f"{what} (result {i})", rtol, atol, hint)
        return
    expected = as_tensor(expected, task)
    if expected.is_floating_point() or expected.is_complex():
        assert_close(actual, expected, what, rtol, atol, hint)
        return
    actual = as_tensor(actual, task)
    if tuple(actual.shape) != tuple(expected.shape) or actual.dtype != expected.dtype or not torch.equal(actual, expected):
        raise CheckFailed(f"{what}: the two results are not identical. {hint}".strip())


def check_no_side_effects(task: str, facts: dict) -> None:
    """Raise CheckFailed if the observed facts show a changed argument or model."""
    for name, f in sorted(facts.get("inputs", {}).items()):
        if not isinstance(f, dict) or f.get("changed") or f.get("requires_grad") or f.get("grad"):
            raise CheckFailed(f"{task} changed its argument `{name}` (values, requires_grad or .grad) — "
                              "work on a detached copy: x = inputs.detach().clone().requires_grad_(True).")
    for name, f in sorted(facts.get("models", {}).items()):
        if not isinstance(f, dict):
            raise CheckFailed(f"{task}: the side effects on `{name}` could not be observed.")
        before, after = f.get("before", {}), f.get("after", {})
        what = [k for k in ("training", "hooks", "requires_grad", "grads", "modules") if before.get(k) != after.get(k)]
        if f.get("values_changed"):
            what.append("parameters or buffers")
        if what:
            raise CheckFailed(f"{task} left `{name}` changed ({', '.join(what)}): keep eval mode, remove every hook, "
                              "change no weights, and use torch.autograd.grad so no .grad accumulates.")


def batch_equals_single(task: str, rtol=1e-4, atol=1e-5, row_kwargs=("inputs", "target"), scale_atol=0.0):
    """Explaining a batch gives the same rows as explaining each example alone."""

    def prop(fn, case: Case) -> None:
        kwargs = case.kwargs
        batched = as_tensor(fn(**kwargs), task)
        n = kwargs[row_kwargs[0]].shape[0]
        for i in range(n):
            single = dict(kwargs)
            for k in row_kwargs:
                v = kwargs[k]
                single[k] = v[i:i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 else v
            row = as_tensor(fn(**single), task)
            assert_close(batched[i:i + 1], row, f"{task}: row {i} of the batch vs example {i} alone "
                         f"({case.description})", rtol, atol,
                         "Each example must be explained for its own target, independently of the others.", scale_atol)

    return prop


class ForwardCounter(nn.Module):
    """Wraps a model to count its forward passes and the largest batch it saw (is the work batched?).

    Attributes of the wrapped model (a text model's `encode`, `tokenizer`, ...) stay reachable."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.rows = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        first = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(first, torch.Tensor) and first.dim() > 0:
            self.rows = max(self.rows, first.shape[0])
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)


def _counted(output, kwargs):
    return output, kwargs["model"].calls, kwargs["model"].rows


def count_forward(fn, kwargs: dict):
    """(output, forward passes, largest batch) of one call with `model` wrapped in a ForwardCounter."""
    output, calls, rows = fn.call(dict(kwargs, model=ForwardCounter(kwargs["model"]).eval()), post=_counted).output
    return output, int(calls), int(rows)


def no_hooks_left_on_error(task: str, failing):
    """When the forward pass raises, the function leaves no hook behind (a try: … finally: block).

    `failing(case)` gives keyword arguments whose forward pass fails after the hooks are in place."""

    def prop(fn, case: Case) -> None:
        try:
            facts = fn.call(failing(case), observe=True).facts
        except StudentError as err:
            facts = err.facts
        for name, f in sorted(facts.get("models", {}).items()):
            if isinstance(f, dict) and f.get("before", {}).get("hooks") != f.get("after", {}).get("hooks"):
                raise CheckFailed(f"{task} left a hook on `{name}` when the model raised an error during the call "
                                  "(a failing forward pass, or an invalid target): register the hooks, then run the "
                                  "model inside try: … finally: that removes them.")

    return prop


def carries_graph(output, kwargs) -> bool:
    """Whether the result (or any tensor of a returned tuple) carries autograd history."""
    items = output if isinstance(output, (tuple, list)) else (output,)
    return any(bool(getattr(item, "requires_grad", False)) for item in items)


def no_graph(task: str):
    """The result carries no autograd graph: it was computed without gradients, as the docstring says."""

    def prop(fn, case: Case) -> None:
        if fn.call(case.kwargs, post=carries_graph).output:
            raise CheckFailed(f"{task} on {case.description} returned a tensor that requires grad: run the model "
                              "under torch.no_grad() (these values need no gradients, and keeping the graph costs "
                              "memory).")

    return prop


def extra_dim(case: Case) -> dict:
    """The case's arguments with a trailing dimension of size 1 added to `inputs`: the model fails inside
    its forward pass (for no_hooks_left_on_error)."""
    return dict(case.kwargs, inputs=case.kwargs["inputs"].unsqueeze(-1).clone())


def argument_state(kwargs: dict) -> dict:
    """The state of the models and tensors INSIDE lists, tuples and dicts among the arguments (a list of
    checkpoints, an (X, y) pair), which `observe=True` does not look into: {name: state}, e.g. "train[0]"."""
    from xailab.grading import module_facts

    state: dict = {}

    def visit(value, name: str, depth: int) -> None:
        if depth > 0 and isinstance(value, nn.Module):
            state[name] = {"facts": module_facts(value),
                           "values": [t.detach().clone() for t in list(value.parameters()) + list(value.buffers())]}
        elif depth > 0 and isinstance(value, torch.Tensor):
            state[name] = {"values": [value.detach().clone()], "requires_grad": bool(value.requires_grad),
                           "grad": value.grad is not None}
        elif depth < 3 and isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f"{name}[{i}]", depth + 1)
        elif depth < 3 and isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{name}[{key!r}]", depth + 1)

    for key, value in kwargs.items():
        visit(value, key, 0)
    return state


def _after_call(output, kwargs):
    return output, carries_graph(output, kwargs), argument_state(kwargs)


def observed_call(fn, task: str, kwargs: dict, seed: int = 0):
    """One call that raises CheckFailed if the function changed any model or tensor among its arguments — also
    those inside lists, tuples and dicts (checkpoints, (X, y) pairs). Returns (output, whether the output
    carries an autograd graph)."""
    reply = fn.call(kwargs, observe=True, post=_after_call, seed=seed)
    check_no_side_effects(task, reply.facts)
    output, graph, after = reply.output
    for name, before in argument_state(kwargs).items():
        now = after.get(name) if isinstance(after, dict) else None
        same = (isinstance(now, dict) and len(now.get("values", ())) == len(before["values"])
                and all(isinstance(a, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
                        for a, b in zip(now["values"], before["values"]))
                and all(now.get(k) == v for k, v in before.items() if k != "values"))
        if not same:
            raise CheckFailed(f"{task} changed `{name}` (its values, mode, requires_grad or .grad): leave every model "
                              "and tensor you are given as it was — work on detached copies, use torch.func or "
                              "torch.autograd.grad (no .backward()), and never call .train() or change weights in "
                              "place.")
    return output, bool(graph)
