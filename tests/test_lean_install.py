"""`pip install pst` is the library alone: nothing under pst/ outside pst/repro needs an extra.

Two checks: statically, every third-party module the library's files import (lazy imports
included) belongs to a distribution in pyproject's ``dependencies``; and at run time, in a fresh
interpreter where every module that only the extras bring is made unimportable, ``import pst``
and a sparsify / train step / adapter round trip / merge still work.
"""
import ast
import importlib.metadata as metadata
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LIBRARY_FILES = sorted((ROOT / "pst").glob("*.py"))  # pst/repro is the reproduction
# Modules a library file may import without declaring them, each where it is optional: triton ships
# with torch's CUDA builds, and pst.kernels imports its kernels only where triton is installed.
OPTIONAL = {("pst/_triton_kernels.py", "triton")}


def _requirements(lines: list[str]) -> list[Requirement]:
    own = canonicalize_name(PROJECT["name"])
    return [r for r in map(Requirement, lines) if canonicalize_name(r.name) != own]


def _third_party_imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module.partition(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m != "pst"}


def _closure(names: set[str]) -> set[str]:
    """The installed distributions ``names`` need, transitively (markers evaluated, no extras)."""
    seen: set[str] = set()
    stack = [canonicalize_name(n) for n in names]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for requirement in map(Requirement, requires):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                stack.append(canonicalize_name(requirement.name))
    return seen


def _modules_of(distributions: set[str]) -> set[str]:
    return {
        module for module, owners in metadata.packages_distributions().items()
        if any(canonicalize_name(owner) in distributions for owner in owners)
        and not module.startswith("_") and module.isidentifier()
    }


def test_library_imports_only_its_declared_dependencies():
    declared = {canonicalize_name(r.name) for r in _requirements(PROJECT["dependencies"])}
    owners = metadata.packages_distributions()
    undeclared = []
    for path in LIBRARY_FILES:
        for module in sorted(_third_party_imports(path)):
            if (str(path.relative_to(ROOT)), module) in OPTIONAL:
                continue
            distributions = {canonicalize_name(d) for d in owners.get(module, [module])}
            if not distributions & declared:
                undeclared.append(f"{path.relative_to(ROOT)} imports {module} ({', '.join(sorted(distributions))})")
    assert not undeclared, "pst/ outside pst/repro imports packages that `pip install pst` lacks: " + "; ".join(
        undeclared
    )


def test_library_runs_without_the_extras(tmp_path):
    core = _closure({r.name for r in _requirements(PROJECT["dependencies"])})
    extras = {
        canonicalize_name(r.name)
        for name, lines in PROJECT["optional-dependencies"].items()
        for r in _requirements(lines)
    }
    blocked = sorted(_modules_of(_closure(extras) - core))
    # The extras' heavy packages are among them (the check would be empty otherwise).
    assert {"datasets", "accelerate", "pandas", "matplotlib", "evaluate", "peft"} <= set(blocked), blocked
    script = textwrap.dedent(
        f"""
        import sys, json
        blocked = json.loads({json.dumps(json.dumps(blocked))})
        for name in blocked:
            sys.modules[name] = None  # `import name` raises ImportError; find_spec says absent
        try:
            import datasets
        except ImportError:
            pass
        else:
            raise SystemExit("the blocker failed: datasets imported")

        import torch, transformers, pst
        torch.manual_seed(0)
        config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
        model = pst.sparsify(transformers.LlamaForCausalLM(config), pst.PSTConfig(sparsity=0.5))
        ids = torch.randint(0, 64, (2, 8))
        model(input_ids=ids, labels=ids).loss.backward()
        pst.save_adapter(model, {str(tmp_path / "adapter")!r})
        torch.manual_seed(0)
        restored = pst.load_adapter(transformers.LlamaForCausalLM(config), {str(tmp_path / "adapter")!r})
        pst.merge(restored).save_pretrained({str(tmp_path / "merged")!r})
        leaked = sorted(name for name in blocked if sys.modules.get(name) is not None)
        print(json.dumps(leaked))
        """
    )
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # this checkout's pst
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": path})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_the_static_check_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import json\n\ndef f():\n    import pandas.io\n    from datasets import load_dataset\n")
    assert _third_party_imports(module) == {"pandas", "datasets"}
