"""The package's shape: imports go one way, `__init__.py` only re-exports.

Read with `ast` (nothing is imported), so these tests need no TensorFlow.
The import graph is taken between the units of `tff_pipeline/`: its
subpackages (`aggregators`, `algorithms`, `data`, ...) and its top-level
modules (`config`, `client_reports`, ...). Every import counts, also one
inside a function, since such imports are how cycles get hidden.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = 'tff_pipeline'
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE
SOURCES = sorted(ROOT.rglob('*.py'))


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix('').parts
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _imported_modules(path: pathlib.Path) -> list[str]:
  """Absolute names of every module `path` imports (or imports from)."""
  name = _module_name(path)
  package = name if path.name == '__init__.py' else name.rpartition('.')[0]
  imported = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      imported += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        anchor = package.split('.')
        anchor = anchor[:len(anchor) - node.level + 1]
        base = '.'.join(anchor + ([base] if base else []))
      # `from a import b` imports a, and a.b when b is a module.
      imported.append(base)
      imported += [f'{base}.{alias.name}' for alias in node.names]
  return imported


def _unit(module: str) -> str | None:
  """The subpackage or top-level module of `tff_pipeline` `module` is in."""
  parts = module.split('.')
  if parts[0] != PACKAGE or len(parts) < 2:
    return None
  unit = parts[1]
  exists = (ROOT / unit).is_dir() or (ROOT / f'{unit}.py').is_file()
  return unit if exists else None


def _unit_graph() -> dict[str, set[str]]:
  graph: dict[str, set[str]] = {}
  for path in SOURCES:
    source = _unit(_module_name(path))
    if source is None:  # tff_pipeline/__init__.py itself.
      continue
    targets = graph.setdefault(source, set())
    for module in _imported_modules(path):
      target = _unit(module)
      if target is not None and target != source:
        targets.add(target)
  return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as [a, b, ..., a], or None."""
  done: set[str] = set()

  def visit(node: str, path: list[str]) -> list[str] | None:
    if node in path:
      return path[path.index(node):] + [node]
    if node in done:
      return None
    for target in sorted(graph.get(node, ())):
      cycle = visit(target, path + [node])
      if cycle:
        return cycle
    done.add(node)
    return None

  for node in sorted(graph):
    cycle = visit(node, [])
    if cycle:
      return cycle
  return None


def test_the_sources_are_found():
  assert ROOT / '__init__.py' in SOURCES
  graph = _unit_graph()
  # A sanity check of the parsing: edges that exist.
  assert 'config' in graph['aggregators']
  assert 'client_reports' in graph['algorithms']


def test_find_cycle_finds_one():
  assert _find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == [
      'a', 'b', 'c', 'a']
  assert _find_cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None


def test_no_import_cycle_between_units():
  cycle = _find_cycle(_unit_graph())
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_aggregators_and_algorithms_meet_only_in_client_reports():
  graph = _unit_graph()
  assert 'algorithms' not in graph['aggregators']
  assert 'aggregators' not in graph['algorithms']


@pytest.mark.parametrize('path', SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_library_never_imports_experiments(path):
  bad = [m for m in _imported_modules(path)
         if m == 'experiments' or m.startswith('experiments.')]
  assert not bad, f'{path} imports {bad}'


@pytest.mark.parametrize('path', [p for p in SOURCES if p.name == '__init__.py'],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_init_files_only_re_export(path):
  defined = [node.name for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                  ast.ClassDef))]
  assert not defined, f'{path} defines {defined}; move them to a named module'


@pytest.mark.parametrize('path', SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_tff_structure_is_used_only_in_the_structure_module(path):
  if path.name == '_structure.py':
    return
  uses = [node.lineno for node in ast.walk(ast.parse(path.read_text()))
          if isinstance(node, ast.Attribute) and node.attr == 'structure'
          and isinstance(node.value, ast.Name) and node.value.id == 'tff']
  assert not uses, f'{path}:{uses} uses tff.structure; use _structure'


@pytest.mark.parametrize('path', SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_pipeline_is_imported_at_module_level(path):
  """An import of tff_pipeline inside a function is how a cycle hides."""
  tree = ast.parse(path.read_text())
  top_level = {id(node) for node in tree.body}
  hidden = [node.lineno for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            and id(node) not in top_level
            and any(m.startswith(PACKAGE) for m in (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or '']))]
  assert not hidden, f'{path}:{hidden} imports {PACKAGE} inside a block'
