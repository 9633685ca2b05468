"""Which of the project's source files decide a script's output, and a digest of them.

A stage of the loop (a script such as judge/score.py) is decided by its own file and by every project
module it imports, directly or through others: judge/score.py imports judge/prompt.py and judge/parse.py,
so an edit to the judge template or the score parser changes judge/score.py's digest and no other
stage's that does not import them. The imports are read from the source (ast), not run, so this costs
milliseconds and imports nothing. An import inside a function counts too: a module a script may use is
taken to decide its output. Modules outside the project (torch, yaml) are left out: they are the
environment, not the method.

    files = source_files("judge/score.py")     # [Path(".../judge/score.py"), Path(".../judge/prompt.py"), ...]
    code_digest("judge/score.py")              # 16 hex digits; configs/iteration.py writes it into the stage
                                               # stamps, and the sampling stages into their settings records
"""
import ast
import hashlib
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "kernels", "sample", "judge", "train", "eval")


def _module_file(name: str) -> Path | None:
    """The project file that `import name` runs last (a module's .py or a package's __init__.py)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)  # each file parsed once per process, however many scripts import it
def _imports(path: Path) -> frozenset[str]:
    """Every module name `path` imports, with the packages it passes through (importing a.b runs a too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from a import b`: b may be a module of package a, or a name defined in a
            found = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in found:
            parts = name.split(".")
            names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(names)


@lru_cache(maxsize=None)
def source_files(script: str) -> tuple[Path, ...]:
    """The script (a path relative to the project root, or absolute) and every project file it imports,
    transitively, sorted."""
    start = Path(script) if Path(script).is_absolute() else ROOT / script
    if not start.is_file():
        raise FileNotFoundError(f"{script}: no such script in {ROOT}")
    seen, todo = {start.resolve()}, [start.resolve()]
    while todo:
        for name in _imports(todo.pop()):
            path = _module_file(name)
            if path is not None and path.resolve() not in seen:
                seen.add(path.resolve())
                todo.append(path.resolve())
    return tuple(sorted(seen))


def code_digest(*scripts: str) -> str:
    """A digest of the contents of every file the scripts' outputs depend on (see source_files)."""
    digest = hashlib.sha256()
    for path in sorted({p for script in scripts for p in source_files(script)}):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]
