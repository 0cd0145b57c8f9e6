"""Automatic mutants of the solution regions: the generator's operators and ids, the reviewed list
of equivalent mutants, and a fixed sample of mutants of every task, each of which the hidden checks
must kill (unless it is listed as equivalent). The full sweep is `make mutation`."""
import ast
import functools
import textwrap

import pytest

from grader import mutation
from grader.mutation.runner import TaskChecks, judge

PER_TASK = 1  # sampled mutants per task (the full sweep is `make mutation`)

SNIPPET = '''
def f(model, inputs, target, n=4, batch_size=8):
    """A docstring."""
    x = inputs.detach().clone()
    with torch.no_grad():
        y = model(x).sum(dim=(2, 3)) * 2 + 1
    total = 0
    for i in range(0, n, batch_size):
        total += y[i:i + batch_size].clamp(min=0)
    if n > 1 and batch_size is not None:
        total = -total
    try:
        z = torch.cat([total, y], 1)
    finally:
        x.add_(1)
    return z if n else F.softmax(y, dim=1)
'''


def snippet_mutants(source=SNIPPET):
    func = ast.parse(textwrap.dedent(source)).body[0]
    return mutation.mutants_of(mutation.Region("lab00", "f", 0, func), {"torch", "F"})


def test_every_operator_kind_is_produced():
    made = {m.operator for m in snippet_mutants()}
    assert made == set(mutation.OPERATORS), f"operators that made no mutant: {set(mutation.OPERATORS) - made}"


def test_typical_changes_are_among_the_mutants():
    changes = {(m.before, m.after) for m in snippet_mutants()}
    for expected in [("model(x).sum(dim=(2, 3))", "model(x).mean(dim=(2, 3))"),      # reduction
                     ("model(x).sum(dim=(2, 3))", "model(x).sum(dim=(2,))"),          # dimension
                     ("model(x).sum(dim=(2, 3))", "model(x).sum(dim=(2, 3), keepdim=True)"),
                     ("inputs.detach()", "inputs"),                                   # dropped detach
                     ("y[i:i + batch_size].clamp(min=0)", "y[i:i + batch_size].clamp(max=0)"),
                     ("n > 1", "n >= 1"), ("n > 1", "n > 0"), ("-total", "total"),   # constants shown in context
                     ("torch.cat([total, y], 1)", "torch.cat(1, [total, y])")]:
        assert expected in changes, f"no mutant {expected[0]} → {expected[1]}"
    assert any(m.operator == "unwrap" and m.before.startswith("with torch.no_grad()") for m in snippet_mutants())


def test_ids_are_stable_unique_and_independent_of_the_docstring():
    first = snippet_mutants()
    again = snippet_mutants(SNIPPET.replace('"""A docstring."""', '"""A longer docstring.\n\n    Two paragraphs.\n    """'))
    assert [m.id for m in first] == [m.id for m in again]
    assert len({m.id for m in first}) == len(first)
    sources = [m.source for m in first]
    assert len(set(sources)) == len(sources), "duplicate mutants"
    original = ast.unparse(ast.parse(textwrap.dedent(SNIPPET)))
    assert original not in sources
    for m in first:
        compile(m.source, m.id, "exec")
        assert '"""' in m.source.split("\n")[1] or "'''" in m.source.split("\n")[1], "the docstring stays"


@functools.lru_cache(maxsize=None)
def all_mutants():
    """The mutants of the labs whose sweep was reviewed (a table in grader/mutants/equivalent.toml)."""
    return {lab: mutation.generate(lab) for lab in mutation.reviewed_labs()}


@pytest.fixture(scope="module")
def generated():
    return all_mutants()


def test_every_task_of_every_lab_has_mutants(generated):
    for lab, mutants in generated.items():
        tasks = {m.task for m in mutants}
        assert tasks == mutation.task_names(lab), f"{lab}: tasks without mutants {mutation.task_names(lab) - tasks}"
        assert len({m.id for m in mutants}) == len(mutants)


def test_generation_is_deterministic(generated):
    mutation.notebook.cache_clear()
    mutation._modules.cache_clear()
    lab = sorted(generated)[0]
    assert [m.id for m in mutation.generate(lab)] == [m.id for m in generated[lab]]


def test_equivalent_list_names_existing_mutants_with_reasons(generated):
    ids = {m.id for mutants in generated.values() for m in mutants}
    listed = mutation.equivalents()
    stale = sorted(set(listed) - ids)
    assert not stale, f"grader/mutants/equivalent.toml lists mutants that no longer exist (review again): {stale[:5]}"
    for mid, reason in listed.items():
        assert isinstance(reason, str) and reason.strip() and "\n" not in reason.strip(), f"{mid}: one-line reason"


def test_a_mutant_is_built_like_a_students_notebook():
    """The mutated cell runs after the notebook's other definitions: it may call earlier tasks."""
    gxi = [m for m in mutation.generate("lab01", ["gradient_x_input"]) if m.operator == "arith"][0]
    fn = gxi.build(mutation.notebook("lab01"))
    assert fn.__globals__["vanilla_gradient"].__name__ == "vanilla_gradient"
    assert fn.__globals__["__name__"] == mutation.NOTEBOOK_NAME
    assert "vanilla_gradient(model, inputs, target) / inputs.detach()" in gxi.source


SAMPLE = [(m.lab, m.task, m.id) for m in mutation.sample([m for ms in all_mutants().values() for m in ms
                                                          if m.id not in mutation.equivalents()], PER_TASK)]
CHECKS: dict = {}


@pytest.mark.parametrize("lab,task,mutant_id", SAMPLE)
def test_sampled_mutant_is_killed(lab, task, mutant_id):
    mutant = next(m for m in mutation.generate(lab, [task]) if m.id == mutant_id)
    if (lab, task) not in CHECKS:
        from grader.checks import checks_for

        CHECKS[(lab, task)] = TaskChecks(checks_for(lab, task))  # definition order: set up lazily
    result = judge(mutant, CHECKS[(lab, task)])
    assert result["status"] == "killed", f"{mutant.change} survives every check of {task}"
