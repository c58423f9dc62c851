"""Tests mirror the package: every prunec module with logic (a function, or a class with a
method) has a test file of its own at ``tests/<subpackage>/test_<module>.py``.

Some modules were tested before this rule under another name; ``TESTED_AS`` says where (the
files stay where they are). ``NOT_YET`` lists the modules still without a test file of
their own: a new module with logic fails this test until it has one, and adding a test file
for a listed module fails it until the entry is removed, so both lists stay true.
"""
from __future__ import annotations

import ast
from pathlib import Path

import prunec

PACKAGE = Path(prunec.__file__).parent
TESTS = Path(__file__).parent

TESTED_AS: dict[str, str] = {
    "backends/artifact.py": "backends/test_artifacts.py",
    "backends/integrity.py": "backends/test_load_safety.py",
    "ir/rules/attention.py": "ir/test_rules.py",
    "ir/rules/conv.py": "ir/test_rules.py",
    "ir/rules/elementwise.py": "ir/test_rules.py",
    "ir/rules/linear.py": "ir/test_rules.py",
    "ir/rules/norm.py": "ir/test_rules.py",
    "ir/rules/pool.py": "ir/test_rules.py",
    "ir/rules/registry.py": "ir/test_rules.py",
    "ir/rules/shape.py": "ir/test_rules.py",
    "passes/base.py": "passes/test_pass_manager.py",
    "passes/latency_table.py": "passes/test_latency.py",
    "passes/prune_depth.py": "passes/test_depth.py",
    "passes/prune_heads.py": "passes/test_heads.py",
    "passes/prune_layers.py": "passes/test_depth_layers.py",
    "passes/prune_magnitude.py": "passes/test_magnitude_scoring.py",
    "passes/prune_variance.py": "passes/test_variance.py",
    "recipes/ocs_pruner.py": "recipes/test_ocspruner.py",
    "recipes/ocs_train.py": "recipes/test_ocspruner.py",  # ocspruner(), the training loop
    "zoo.py": "test_zoo_1d.py",
}

# Modules with logic still without a test file (none now; list one here only with a reason).
NOT_YET: set[str] = set()


def has_logic(source: str) -> bool:
    """Whether a module defines a function, or a class with a method (not only re-exports,
    constants and exception classes)."""
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return True
        if isinstance(node, ast.ClassDef) and any(
                isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in node.body):
            return True
    return False


def mirrored(relative: Path) -> Path:
    """``tests/<subpackage>/test_<module>.py`` for ``<subpackage>/<module>.py`` (a package's
    ``__init__.py`` is tested as ``test_<package>.py`` beside the package's test folder)."""
    if relative.name == "__init__.py":
        return relative.parent.parent / f"test_{relative.parent.name}.py"
    return relative.parent / f"test_{relative.stem}.py"


def test_has_logic_tells_code_from_declarations():
    assert has_logic("def f():\n    pass\n")
    assert has_logic("class A:\n    def m(self):\n        pass\n")
    assert not has_logic("from x import y\nA = 1\nclass E(Exception):\n    '''doc'''\n")
    assert mirrored(Path("ir/rules/conv.py")) == Path("ir/rules/test_conv.py")
    assert mirrored(Path("api.py")) == Path("test_api.py")


def test_every_module_with_logic_has_a_test_file_of_its_own():
    missing = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if path.name == "__main__.py" or not has_logic(path.read_text(encoding="utf-8")):
            continue
        if (TESTS / mirrored(relative)).exists():
            assert str(relative) not in TESTED_AS, f"{relative} has its mirrored test file; " \
                f"remove it from TESTED_AS"
            continue
        alias = TESTED_AS.get(str(relative))
        if alias is not None:
            assert (TESTS / alias).exists(), f"TESTED_AS names a missing file: {alias}"
            continue
        missing.add(str(relative))
    assert not missing - NOT_YET, "modules without a test file (add tests/" + \
        ", tests/".join(str(mirrored(Path(m))) for m in sorted(missing - NOT_YET)) + ")"
    assert not NOT_YET - missing, f"these now have a test file; remove them from NOT_YET: " \
        f"{sorted(NOT_YET - missing)}"
