"""dvc.yaml's deps and outs are complete: drift between the code and the pipeline file is a failing test.

Two views of what a stage uses:
- static: the modules its entry point imports, followed through ``pipeline/`` (imports
  inside functions included), must each lie under one of the stage's deps;
- dynamic: the stage is run under a Python audit hook that records every file it
  opens; each file it reads inside the project must be a dep (or params.yaml), each
  file it writes an out, and every data dep and out must be named in its ``cmd``.
"""

from __future__ import annotations

import ast
import itertools
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT

PACKAGE = PROJECT / "pipeline"


def stages(root: Path = PROJECT) -> dict[str, dict]:
    """dvc.yaml's stages with ``foreach`` and ``matrix`` expanded over params.yaml, as DVC does."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((root / "params.yaml").read_text())
    out = {}
    for name, stage in spec.items():
        if "foreach" in stage:
            for key in params[stage["foreach"].strip("${}")]:
                text = yaml.safe_dump(stage["do"]).replace("${key}", key)
                out[f"{name}@{key}"] = yaml.safe_load(text)
        elif "matrix" in stage:
            axes = {axis: list(params[ref.strip("${}")]) for axis, ref in stage["matrix"].items()}
            template = {k: v for k, v in stage.items() if k != "matrix"}
            for values in itertools.product(*axes.values()):
                text = yaml.safe_dump(template)
                for axis, value in zip(axes, values):
                    text = text.replace(f"${{item.{axis}}}", value)
                out[f"{name}@{'-'.join(values)}"] = yaml.safe_load(text)
        else:
            out[name] = stage
    return out


def paths_of(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def module_file(module: str) -> Path | None:
    relative = Path(*module.split("."))
    for candidate in (PROJECT / relative.with_suffix(".py"), PROJECT / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(path: Path) -> set[str]:
    """Modules of ``pipeline`` that a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pipeline")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names
                      if module_file(f"{node.module}.{alias.name}") is not None}  # `from pkg import module`
    return found


def import_closure(module: str) -> set[Path]:
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            path = module_file(".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo += sorted(imports_of(path))
    return seen


def covered(path: Path, deps: list[str], root: Path = PROJECT) -> bool:
    return any(path == root / d or (root / d) in path.parents for d in deps)


def entry_module(stage: dict) -> str:
    words = shlex.split(stage["cmd"])
    assert words[:2] == ["python", "-m"], stage["cmd"]
    return words[2]


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_module_a_stage_imports_is_one_of_its_deps(name):
    stage = stages()[name]
    deps = paths_of(stage["deps"])
    closure = import_closure(entry_module(stage))
    assert module_file(entry_module(stage)) in closure
    uncovered = sorted(str(p.relative_to(PROJECT)) for p in closure
                       if p != PACKAGE / "__init__.py" and not covered(p, deps))
    assert not uncovered, f"{name} imports {uncovered}, which its deps in dvc.yaml do not cover"
    unused = [d for d in deps if d.startswith("pipeline") and not any(covered(p, [d]) for p in closure)]
    assert not unused, f"{name} depends on {unused} but imports nothing there: edits there re-run it for nothing"


def test_editing_the_image_decoder_re_runs_extract_and_no_train_stage():
    """The train and learning-curve stages read features, not images: the decoder is not among their deps."""
    decoder = PACKAGE / "data" / "images.py"
    for name, stage in stages().items():
        depends = covered(decoder, paths_of(stage["deps"]))
        if name.startswith(("train@", "learning_curve@")):
            assert not depends, f"{name} would re-run when the image decoder changes"
        elif name.startswith("extract@"):
            assert depends, f"{name} would not re-run when the image decoder changes"


def test_the_package_file_every_stage_imports_holds_no_code():
    """pipeline/__init__.py is imported by every stage but listed by none: it may hold only its docstring."""
    body = ast.parse((PACKAGE / "__init__.py").read_text()).body
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_data_dep_and_out_is_named_in_the_stage_cmd(name):
    stage = stages()[name]
    words = set(shlex.split(stage["cmd"]))
    data = [d for d in paths_of(stage["deps"]) if not d.startswith("pipeline")]
    missing = [p for p in [*data, *paths_of(stage["outs"])] if p not in words]
    assert not missing, f"{name}: {missing} are not passed in its cmd, so the code must derive them"


def test_scratch_folders_are_kept_out_of_dvc_and_git():
    """A stage's --scratch folder survives a crash on purpose: DVC must not hash it, git must not track it."""
    scratch = [w for stage in stages().values() for i, w in enumerate(shlex.split(stage["cmd"]))
               if i and shlex.split(stage["cmd"])[i - 1] == "--scratch"]
    assert scratch
    for path in scratch:
        for ignore in (".dvcignore", ".gitignore"):
            lines = [line for line in (PROJECT / ignore).read_text().splitlines() if line.startswith("/")]
            assert any(f"/{path}" == line or f"/{path}".startswith(line + "/") for line in lines), (path, ignore)


def test_no_two_stages_write_the_same_file():
    outs = [p for stage in stages().values() for p in paths_of(stage["outs"])]
    assert len(outs) == len(set(outs))


AUDIT = """
import json, os, runpy, sys
log = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path, mode, flags = args[0], args[1], args[2]
        write = (isinstance(mode, str) and any(c in mode for c in "wxa+")) or (
            mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if not write and not os.path.isabs(path) and not os.path.exists(path):
            return  # a name opened inside a folder by its descriptor (shutil.rmtree's walk), not the cwd's
        log.append([os.path.abspath(os.fsdecode(path)), bool(write)])
    elif event in ("os.rename", "os.replace"):
        log.append([os.path.abspath(os.fsdecode(args[1])), True])
sys.addaudithook(hook)
module, record = sys.argv[1], sys.argv[2]
sys.argv = [module, *sys.argv[3:]]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    with open(record + ".tmp", "w") as f:
        f.write(json.dumps(log))
"""


def real_target(path: Path, root: Path) -> Path:
    """The output an atomic write's temporary name stands for: ``.name.tmp-xyz`` -> ``name``."""
    parts = list(path.relative_to(root).parts)
    for i, part in enumerate(parts):
        if part.startswith(".") and ".tmp-" in part:
            parts[i] = part[1:].split(".tmp-")[0]
    return root.joinpath(*parts)


@pytest.mark.slow
def test_each_stage_reads_only_its_deps_and_params_and_writes_only_its_outs(repo, tmp_path):
    source, env, _, _, _ = repo
    root = tmp_path / "project"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns(".git", ".dvc"))
    (tmp_path / "audit.py").write_text(AUDIT)
    ignored = {".dvc", ".git", "__pycache__"}
    problems = []
    for name, stage in stages(root).items():
        words = shlex.split(stage["cmd"])
        record = tmp_path / f"{name}.json"
        result = subprocess.run([sys.executable, str(tmp_path / "audit.py"), words[2], str(record), *words[3:]],
                                cwd=root, env={**env, "PYTHONPATH": str(root)}, capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
        opened = json.loads(Path(f"{record}.tmp").read_text())
        deps, outs = paths_of(stage["deps"]), paths_of(stage["outs"])
        scratch = [words[i + 1] for i, w in enumerate(words) if w == "--scratch"]  # resume state, not an output
        for path, write in opened:
            path = Path(path)
            if root not in path.parents or ignored & set(path.relative_to(root).parts):
                continue  # outside the project (the images, the libraries), or tools' own files
            target = real_target(path, root)
            if target == root / "pipeline" / "__init__.py":
                continue  # docstring only (test above)
            if covered(target, scratch, root):
                continue
            if write and not covered(target, outs, root):
                problems.append(f"{name} writes {target.relative_to(root)}, not among its outs")
            if not write and not covered(target, [*deps, *outs, "params.yaml"], root):
                problems.append(f"{name} reads {target.relative_to(root)}, not among its deps")
    assert not problems, "\n".join(sorted(set(problems)))


LAYERS = ["common", "data", "embed", "evaluate", "reporting"]  # each may import only the ones before it
BELOW = {"common": set(), "data": {"common"}, "embed": {"common", "data"},
         "evaluate": {"common", "data", "embed"}, "reporting": {"common", "data", "embed"}}


def test_the_library_imports_only_downward_and_has_no_cycle():
    modules = {".".join(p.relative_to(PROJECT).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}
    upward = []
    for name, targets in graph.items():
        parts = name.split(".")
        if len(parts) < 3:
            continue  # entry points and package files may import any layer
        for target in targets:
            layer = target.split(".")[1]
            if layer != parts[1] and layer in LAYERS and layer not in BELOW[parts[1]]:
                upward.append(f"{name} -> {target}")
    assert not upward, upward
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in graph[name]:
            assert state.get(target) != 1, f"import cycle: {' -> '.join([*path, name, target])}"
            if target not in state:
                visit(target, [*path, name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
