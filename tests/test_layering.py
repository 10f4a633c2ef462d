"""Each top folder has one job, and data flows one way: these tests read every
impax module's imports (module level and function-local alike, with `ast`) and
fail on an import that crosses a layer the wrong way, or on an import circle."""

import ast
import collections
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Top folder -> the package it is under the import namespace (pyproject's package-dir).
PACKAGES = {"impax": "impax", "pipelines": "impax.pipelines", "datasets": "impax.datasets",
            "tools": "impax.tools", "model": "impax.model", "train": "impax.train",
            "flows": "impax.flows"}
LAYERS = ("pipelines", "datasets", "tools", "model", "train", "flows", "cli", "demo", "root")
# layer -> (the layers it may import, the rule in words)
RULES = {
    "model": ({"model"}, "model imports only model"),
    "datasets": ({"datasets"}, "datasets imports only datasets"),
    "tools": ({"datasets", "tools"}, "tools imports only datasets and tools"),
    "pipelines": ({"datasets", "tools", "pipelines"},
                  "pipelines imports only datasets, tools and pipelines"),
    "train": ({"datasets", "model", "train"}, "train imports only datasets, model and train"),
    "demo": (set(LAYERS) - {"flows", "cli"}, "demo imports anything but flows and cli"),
    "flows": (set(LAYERS) - {"cli"}, "flows imports anything but cli"),
    "cli": (set(LAYERS), "cli imports anything"),
    "root": (set(), "root imports nothing of impax"),
}
FLOWS_RULE = "nothing but flows and the cli imports flows"

Edge = collections.namedtuple("Edge", "source target file line")


def tree_sources(root: pathlib.Path = ROOT) -> dict[str, str]:
  """{path relative to the repository: source} of every module of the project."""
  return {path.relative_to(root).as_posix(): path.read_text()
          for folder in PACKAGES for path in sorted((root / folder).rglob("*.py"))}


def module_name(path: str) -> str:
  """datasets/specs/jsonl.py -> impax.datasets.specs.jsonl; pipelines/__init__.py -> impax.pipelines."""
  folder, *rest = pathlib.PurePosixPath(path).with_suffix("").parts
  if rest[-1] == "__init__":
    rest = rest[:-1]
  return ".".join([PACKAGES[folder], *rest])


def layer(module: str) -> str:
  parts = module.split(".")
  if len(parts) == 1:
    return "root"
  return {"cli": "cli", "demo": "demo"}.get(parts[1], parts[1])


def imports(sources: dict[str, str]) -> tuple[list[Edge], list[str]]:
  """Every import of an impax module in the sources, and the files that would not parse."""
  modules = {module_name(path): path for path in sources}
  edges, broken = [], []

  def resolved(name: str) -> str | None:
    """The project module `name` names, or the nearest package above it."""
    while name and name not in modules:
      name = name.rpartition(".")[0]
    return name or None

  for path, source in sorted(sources.items()):
    try:
      tree = ast.parse(source, filename=path)
    except SyntaxError as e:
      broken.append(f"{path}:{e.lineno}: cannot be parsed ({e.msg})")
      continue
    module = module_name(path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
      targets = []
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: `from .. import x` is from the package above this one
          parts = package.split(".")
          base = ".".join([*parts[:len(parts) - node.level + 1], *filter(None, [node.module])])
        else:
          base = node.module
        for alias in node.names:
          child = f"{base}.{alias.name}"
          targets.append(child if alias.name != "*" and child in modules else base)
      for target in targets:
        if target == "impax" or target.startswith("impax."):
          target = resolved(target) or target
          if target != module:
            edges.append(Edge(module, target, path, node.lineno))
  return edges, broken


def layer_violations(edges: list[Edge]) -> list[str]:
  out = []
  for e in sorted(edges, key=lambda e: (e.file, e.line, e.target)):
    source, target = layer(e.source), layer(e.target)
    allowed, rule = RULES.get(source, (set(), f"{source} has no layering rule"))
    if target not in RULES:
      rule = f"{e.target} is in no layer: add one to RULES in tests/test_layering.py"
    elif target == "flows" and source not in ("flows", "cli"):
      rule = FLOWS_RULE
    elif target in allowed:
      continue
    out.append(f"{e.file}:{e.line}: {source} may not import {e.target} ({rule})")
  return out


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
  """Tarjan's strongly connected components of the graph, each sorted."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def shortest_path(graph: dict[str, set[str]], start: str, goal: str, within: set[str]) -> list[str]:
  paths = {start: [start]}
  queue = collections.deque([start])
  while queue:
    v = queue.popleft()
    for w in sorted(graph[v] & within):
      if w not in paths:
        paths[w] = paths[v] + [w]
        if w == goal:
          return paths[w]
        queue.append(w)
  raise AssertionError(f"no path from {start} to {goal} in a strongly connected component")


def circles(edges: list[Edge]) -> list[str]:
  """One circle for every import that closes one: each as its modules in order,
  with the file:line of every import along it."""
  sites = collections.defaultdict(list)
  for e in edges:
    sites[e.source, e.target].append((e.file, e.line))
  graph = collections.defaultdict(set)
  for source, target in sites:
    graph[source].add(target)
    graph.setdefault(target, set())
  out, seen = [], set()
  for component in strongly_connected(graph):
    within = set(component)
    covered = set()
    for source in component:
      for target in sorted(graph[source] & within):
        if (source, target) in covered:
          continue
        cycle = [source] + shortest_path(graph, target, source, within)
        steps = list(zip(cycle, cycle[1:]))
        covered.update(steps)
        first = min(range(len(steps)), key=lambda i: steps[i])  # one name for each rotation
        key = tuple(steps[first:] + steps[:first])
        if key in seen:
          continue
        seen.add(key)
        lines = "".join(f"\n  {', '.join(f'{f}:{n}' for f, n in sorted(sites[s, t]))}: "
                        f"{s} imports {t}" for s, t in key)
        out.append(f"import circle {' -> '.join([key[0][0], *(t for _, t in key)])}:{lines}")
  return sorted(out)


def test_every_import_keeps_to_its_layer():
  edges, broken = imports(tree_sources())
  violations = broken + layer_violations(edges)
  if violations:
    pytest.fail(f"{len(violations)} import(s) break the layering:\n" + "\n".join(violations),
                pytrace=False)


def test_no_import_circles():
  edges, broken = imports(tree_sources())
  found = broken + circles(edges)
  if found:
    pytest.fail(f"{len(found)} import circle(s):\n" + "\n".join(found), pytrace=False)


def test_the_checker_finds_a_broken_rule_and_a_circle():
  sources = {
      "impax/__init__.py": '"""The package."""\n',
      "datasets/__init__.py": "",
      "datasets/specs/__init__.py": "",
      "datasets/specs/jsonl.py": "from .. import decode  # relative, to a module\n",
      "datasets/decode.py": ("import os\n\n\ndef decode():\n"
                             "  from impax.pipelines import records  # function-local\n"),
      "pipelines/__init__.py": "",
      "pipelines/records.py": "from impax.datasets import decode, registry_name\n",
      "train/__init__.py": "",
      "train/trainer.py": "import impax.train.evaluate\n",
      "train/evaluate.py": "def run():\n  from . import trainer\n",
      "flows/__init__.py": "",
      "flows/build.py": "from impax.pipelines import *\n",
      "model/__init__.py": "from impax.flows import build\n",
  }
  edges, broken = imports(sources)
  assert broken == []
  assert set(edges) == {
      Edge("impax.datasets.specs.jsonl", "impax.datasets.decode", "datasets/specs/jsonl.py", 1),
      Edge("impax.datasets.decode", "impax.pipelines.records", "datasets/decode.py", 5),
      Edge("impax.pipelines.records", "impax.datasets.decode", "pipelines/records.py", 1),
      Edge("impax.pipelines.records", "impax.datasets", "pipelines/records.py", 1),
      Edge("impax.train.trainer", "impax.train.evaluate", "train/trainer.py", 1),
      Edge("impax.train.evaluate", "impax.train.trainer", "train/evaluate.py", 2),
      Edge("impax.flows.build", "impax.pipelines", "flows/build.py", 1),
      Edge("impax.model", "impax.flows.build", "model/__init__.py", 1),
  }
  assert layer_violations(edges) == [
      "datasets/decode.py:5: datasets may not import impax.pipelines.records "
      "(datasets imports only datasets)",
      "model/__init__.py:1: model may not import impax.flows.build "
      "(nothing but flows and the cli imports flows)",
  ]
  assert circles(edges) == [
      "import circle impax.datasets.decode -> impax.pipelines.records -> impax.datasets.decode:"
      "\n  datasets/decode.py:5: impax.datasets.decode imports impax.pipelines.records"
      "\n  pipelines/records.py:1: impax.pipelines.records imports impax.datasets.decode",
      "import circle impax.train.evaluate -> impax.train.trainer -> impax.train.evaluate:"
      "\n  train/evaluate.py:2: impax.train.evaluate imports impax.train.trainer"
      "\n  train/trainer.py:1: impax.train.trainer imports impax.train.evaluate",
  ]
  assert imports({**sources, "model/heads.py": "def broken(:\n"})[1] == [
      "model/heads.py:1: cannot be parsed (invalid syntax)"]
