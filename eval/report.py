"""The run report: one Markdown file that shows what every iteration did, with PNG plots when matplotlib is installed.

    python eval/report.py --run runs/R          # -> runs/R/report.md, runs/R/plots/*.png

Reads, for every runs/R/iterN/ (N a number; any file may be missing, and so may any key: shown "-"):
  summary.json                 eval/summary.py, from which these keys are shown:
      "prompts"                  prompts answered in the iteration (self-instruct)
      "finish_reasons"           {"stop": n, "length": n} over the candidate answers
      "pairs", "pairs_per_prompt" DPO pairs built (judge/pairs.py), and their yield
      "judge_parse_rate"         fraction of the judge's outputs that gave a score (judge/score.py)
      "score_histogram"          {"0": count, ..., "5": count}: every parsed judgement, rounded
      "mean_chars_chosen", "mean_chars_rejected"   mean lengths of the pairs' answers (judge/pairs.py)
      "dpo_reward_accuracy"      fraction of pairs whose implicit DPO reward prefers the chosen answer
  eval/reward_metrics.json     eval/reward_metrics.py --out: M_N as a reward model (else summary.json's
                               "reward_metrics"); iter0's is the base model M0's, and runs/R/baseline/'s
                               the IFT-only SFT baseline's, shown when there
  eval/head_to_head.json       eval/head_to_head.py --out, with A = M_N and B = M_{N-1}, and
  eval/head_to_head_baseline.json   B = the SFT baseline: summary.json's copies once it exists (it holds the
                               comparisons head_to_head.opponents asks for), else these files
  selection.json               eval/select_checkpoint.py: the DPO checkpoint chosen as M_N
  eval/outside.json            eval/outside.py: AlpacaEval 2.0 and MT-Bench as their own tools scored them
  model.train/metrics.jsonl    DPO's steps (train/loop.py; dpo.train/ when M_N was selected from a DPO run)
and writes runs/R/report.md: a table per concern with a row per iteration (the loop's own statistics;
reward-model metrics; head to head against the previous model, in two tables: judged by an outside model,
beside the paper's GPT-4 numbers, and self-judged, apart from them; checkpoint selection), every rate with
its 95% bootstrap interval and its number of prompts, the paper's numbers beside them, and, when
matplotlib imports, plots in runs/R/plots/ embedded in the report (score distributions, reward-model
metrics and win rates with their intervals, answer lengths beside the paper's, DPO's loss, reward
margin and reward accuracy over steps). Whether the loop helps shows
as rising pairwise accuracy and win rates; saturation as win rates sinking towards ties; drift
towards long answers as the A / B length ratio, the chosen / rejected ratio and the share of answers
cut at the length limit growing.
"""
import argparse
import json
import re
import sys
import time
from pathlib import Path

from eval.outside import PAPER_ALPACAEVAL, PAPER_MT_BENCH
from eval.reward_metrics import COLUMNS as RM_COLUMNS, CORRELATIONS, EXTERNAL_FILE, PAPER as PAPER_REWARD
from eval.stages import is_interval, is_number, number, percent, with_interval
from judge import parse

# The paper's head-to-head result for M2 against M1 (Llama-2-70B, GPT-4 as the judge): win / tie / loss.
PAPER_HEAD_TO_HEAD = {"M2 vs M1": (0.555, 0.328, 0.117)}
# The paper's mean response length (characters) of M1, M2, M3 on AlpacaEval 2.0: the length drift.
PAPER_LENGTHS = {1: 1092, 2: 1552, 3: 2552}
SCORES = [str(s) for s in range(parse.MAX_SCORE + 1)]


def read_json(path: Path) -> dict:
    """The object in a JSON file, {} if there is none; a file that is not a JSON object is an error."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def read_iteration(n: int | str, d: Path) -> dict:
    """{"iter", "summary", "reward", "external", "h2h", "h2h_baseline", "selection", "outside", "training"} of one
    iteration directory (each {} or [] when absent); "external" is the reward metrics on the config's external set."""
    summary = read_json(d / "summary.json")
    reward = read_json(d / "eval" / "reward_metrics.json") or summary.get("reward_metrics")
    external = read_json(d / "eval" / EXTERNAL_FILE) or summary.get("external_reward_metrics")
    # the summary, once made, says which comparisons are current (a file left from other settings is not shown)
    h2h, h2h_baseline = ((summary.get("head_to_head"), summary.get("head_to_head_baseline")) if summary else
                         (read_json(d / "eval" / name) for name in ("head_to_head.json", "head_to_head_baseline.json")))
    selection = read_json(d / "selection.json")
    return {"iter": n, "summary": summary, "reward": reward if isinstance(reward, dict) else {},
            "external": external if isinstance(external, dict) else {},
            "h2h": h2h if isinstance(h2h, dict) else {},
            "h2h_baseline": h2h_baseline if isinstance(h2h_baseline, dict) else {}, "selection": selection,
            "outside": read_json(d / "eval" / "outside.json"),
            "training": read_dpo_steps(d / ("dpo.train" if selection.get("promoted") else "model.train"))}


def read_dpo_steps(train_dir: Path) -> list[dict]:
    """A DPO run's metrics.jsonl (one line per optimizer step; train/loop.py), [] if it is not a DPO run's.
    A line cut short by a crash is skipped."""
    path = train_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "margins" in row:
            steps.append(row)
    return steps


def read_run(run: Path) -> tuple[list[dict], dict | None]:
    """(every iteration, in order, see read_iteration; the IFT-only baseline's, or None)."""
    iters = sorted((int(m.group(1)), d) for d in run.glob("iter*") if d.is_dir()
                   and (m := re.fullmatch(r"iter(\d+)", d.name)))
    baseline = run / "baseline"
    return ([read_iteration(n, d) for n, d in iters],
            read_iteration("SFT baseline", baseline) if baseline.is_dir() else None)


def score_counts(histogram) -> list[float]:
    """The counts of scores 0..MAX_SCORE in a summary's "score_histogram", [] if it holds none."""
    if not isinstance(histogram, dict):
        return []
    counts = [c if is_number(c := histogram.get(s, 0)) else 0 for s in SCORES]
    return counts if sum(counts) > 0 else []


def _histogram(histogram) -> str:
    counts = score_counts(histogram)
    return " / ".join(f"{100 * c / sum(counts):.0f}" for c in counts) if counts else "-"


def _ratio(x, y) -> str:
    return number(x / y, ".2f") if is_number(x) and is_number(y) and y else "-"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _length_limited(finish_reasons) -> str:
    if not isinstance(finish_reasons, dict):
        return "-"
    counts = {k: v for k, v in finish_reasons.items() if is_number(v)}
    return percent(counts.get("length", 0) / sum(counts.values()), 0) if sum(counts.values()) else "-"


def loop_table(iters: list[dict]) -> list[str]:
    rows = [[it["iter"], number(s.get("prompts")), _length_limited(s.get("finish_reasons")), number(s.get("pairs")),
             number(s.get("pairs_per_prompt"), ".2f"), percent(s.get("judge_parse_rate")),
             _histogram(s.get("score_histogram")),
             percent(s.get("dpo_reward_accuracy")),
             f"{number(s.get('mean_chars_chosen'))} / {number(s.get('mean_chars_rejected'))}",
             _ratio(s.get("mean_chars_chosen"), s.get("mean_chars_rejected"))]
            for it in iters if it["iter"] != 0 for s in [it["summary"]]]
    return _table(["iter", "prompts", "answers cut at length limit", "pairs", "pairs a prompt", "judge parse rate",
                   "scores 0/1/2/3/4/5 (% of judgements)", "DPO reward acc", "chars chosen / rejected", "ratio"], rows)


def reward_table(iters: list[dict], baseline: dict | None, key: str = "reward") -> list[str]:
    """The reward-model metrics of each model on the ranked set (key "reward", with the paper's rows) or on the
    external set (key "external")."""
    def cells(m):
        intervals = m.get("intervals") or {}
        return [with_interval(m.get(k), intervals.get(k), as_percent=k not in CORRELATIONS) for k, _ in RM_COLUMNS]

    labelled = ([(baseline["iter"], baseline)] if baseline and baseline[key] else []) + [
        ("0 (M0, base)" if it["iter"] == 0 else it["iter"], it) for it in iters
        if it[key] or (key == "reward" and it["iter"] != 0)]
    rows = [[label, *cells(m), percent(m.get("pairwise_tie_rate")), percent(m.get("parse_rate")),
             number(m.get("n_prompts"))] for label, it in labelled for m in [it[key]]]
    if key == "reward":
        rows += [[f"*paper {name}*", *(number(m.get(k), ".3f") if k in CORRELATIONS else percent(m.get(k))
                                       for k, _ in RM_COLUMNS), "", "", ""] for name, m in PAPER_REWARD.items()]
    return _table(["iter", *(title for _, title in RM_COLUMNS), "tied pairs", "parse rate", "prompts"], rows)


def judge_trend(iters: list[dict], key: str = "reward") -> list[str]:
    """Each model's pairwise accuracy against the one before it, in words: whether it rose or fell, and whether
    by more than chance (the two intervals do not overlap, a conservative test); and, where a model of the loop
    (M2 on) is not a better judge than its predecessor, a sentence that says so and where to look for why."""
    points = [(it["iter"], it[key]) for it in iters if it[key] and is_number(it[key].get("pairwise_accuracy"))]
    steps, not_better = [], []
    for (a, ma), (b, mb) in zip(points, points[1:]):
        x, y = ma["pairwise_accuracy"], mb["pairwise_accuracy"]
        ia, ib = [(m.get("intervals") or {}).get("pairwise_accuracy") for m in (ma, mb)]
        known = is_interval(ia) and is_interval(ib)
        apart = known and (ib[0] > ia[1] or ib[1] < ia[0])
        word = "higher" if y > x else "lower" if y < x else "unchanged"
        how = ("" if y == x else ", no intervals to compare" if not known else ", the intervals apart" if apart
               else ", within the intervals: chance alone could do it")
        steps.append(f"M{a} -> M{b} {percent(x)} -> {percent(y)} ({word}{how})")
        if b >= 2 and (y <= x or (known and not apart)):
            not_better.append((a, b))
    lines = ["Pairwise accuracy: " + "; ".join(steps) + "."] if steps else []
    if not_better:
        lines += ["", ", ".join(f"M{b} is not a better judge than M{a}" for a, b in not_better) + " on this set. "
                  "The loop's DPO pairs train answers, not judgements, so the judge improves only as far as "
                  "the model does: look at whether the pairs were decided by length (the loop table's chars "
                  "chosen / rejected), how many pairs there were, and how consistent the judge's scores are "
                  "(`python bench/judge_levers.py --judged runs/RUN/iterN/judged.jsonl`)."]
    return lines


def judged_by(h: dict) -> str:
    """The judge's checkpoint, short: runs/R/iter2/model -> iter2/model."""
    return "/".join(Path(str(h.get("judge", "-"))).parts[-2:])


# M_N's head-to-head comparisons: the key read_iteration keeps each under, and how the report names its opponent
COMPARISONS = (("h2h", "M{previous}"), ("h2h_baseline", "SFT baseline"))


def head_to_head_table(iters: list[dict], self_judged: bool) -> list[str]:
    """The head-to-head rows, against M_{N-1} and against the SFT baseline, whose judge is (self_judged) or is
    not one of the contestants; the paper's GPT-4 row only beside the external judges' rows, the only ones it
    can be compared with."""
    rows = []
    for it, key, opponent in ((it, key, opponent) for it in iters for key, opponent in COMPARISONS
                              if it[key] and bool(it[key].get("self_judged")) == self_judged):
        h = it[key]
        intervals = h.get("intervals") or {}
        rows.append([it["iter"], f"M{it['iter']} vs {opponent.format(previous=it['iter'] - 1)}",
                     *(with_interval(h.get(k), intervals.get(k)) for k in ("win", "tie", "loss")),
                     number(h.get("no_verdict")), number(h.get("n_compared")),
                     f"{number(h.get('mean_chars_a'))} / {number(h.get('mean_chars_b'))}",
                     _ratio(h.get("mean_chars_a"), h.get("mean_chars_b")), percent(h.get("position_1_rate")),
                     judged_by(h) + " (self-judged)" * self_judged])
    if not rows:
        return []
    if not self_judged:
        rows += [[f"*paper {name}*", "", *map(percent, wtl), "", "256", "", "", "", "GPT-4"]
                 for name, wtl in PAPER_HEAD_TO_HEAD.items()]
    return _table(["iter", "A vs B", "win", "tie", "loss", "no verdict", "prompts", "answer chars A / B",
                   "ratio", "judge picks 1st", "judge"], rows)


def outside_table(iters: list[dict], baseline: dict | None) -> list[str]:
    """The outside benchmarks' scores (eval/outside.py) of each model that has them, beside the paper's."""
    def label(it):
        return "SFT baseline" if it["iter"] == "SFT baseline" else f"M{it['iter']}"
    rows = []
    for it in ([baseline] if baseline else []) + iters:
        a, m = it["outside"].get("alpacaeval") or {}, it["outside"].get("mt_bench") or {}
        if not (a or m):
            continue
        name = label(it)
        paper_a, paper_m = PAPER_ALPACAEVAL.get(name), PAPER_MT_BENCH.get(name)
        rows.append([it["iter"], f"{number(a.get('win_rate'), '.2f')}% ± {number(a.get('standard_error'), '.2f')}"
                     if a else "-", number(a.get("length_controlled_winrate"), ".2f"), number(a.get("avg_length")),
                     "-" if paper_a is None else f"{paper_a:.2f}%", number(m.get("score"), ".2f"),
                     "-" if paper_m is None else f"{paper_m:.2f}"])
    if not rows:
        return ["(none read yet: score eval/export.py's answer files with alpaca_eval and FastChat's llm_judge, "
                "then `python eval/outside.py --iter runs/RUN/iterN ...`)"]
    return _table(["iter", "AlpacaEval 2.0 win rate ± s.e.", "length-controlled", "mean chars",
                   "paper (Llama-2-70B)", "MT-Bench", "paper (Llama-2-70B)"], rows)


def selection_table(iters: list[dict]) -> list[str]:
    rows = []
    for it in iters:
        sel = it["selection"]
        if not sel:
            continue
        chosen = (sel.get("chosen") or {}).get("name", "none")
        wins = ", ".join(f"{'**' * (c.get('name') == chosen)}{c.get('name')}: {percent(c.get('win'), 0)}"
                         f"{'**' * (c.get('name') == chosen)}" for c in sel.get("candidates", []))
        rows.append([it["iter"], chosen, sel.get("against", "-"), wins or "-"])
    return _table(["iter", "chosen", "against", "win % per checkpoint"], rows) if rows else ["(no selection.json)"]


def error_bars(points: list[tuple]) -> list[list[float]]:
    """matplotlib's yerr ([below], [above]) for (x, value, interval) points; 0 where there is no interval."""
    below, above = [], []
    for _, value, interval in points:
        below.append(max(value - interval[0], 0) if is_interval(interval) else 0)
        above.append(max(interval[1] - value, 0) if is_interval(interval) else 0)
    return [below, above]


def plot_reward(plt, rm: list[tuple], title: str, save) -> None:
    """The reward-model metrics (iteration, metrics) with their intervals, one line per metric."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (key, label) in enumerate(RM_COLUMNS):
        points = [(n, m[key], (m.get("intervals") or {}).get(key)) for n, m in rm if is_number(m.get(key))]
        if points:
            ax.errorbar([n + 0.04 * (k - 2) for n, _, _ in points], [v for _, v, _ in points],
                        yerr=error_bars(points), marker="o", capsize=3, label=label)
    ax.set(xlabel="iteration", ylabel="fraction / correlation", title=f"{title} (95% intervals)",
           xticks=[n for n, _ in rm], xlim=(min(n for n, _ in rm) - 0.5, max(n for n, _ in rm) + 0.5))
    ax.legend()
    save(fig)


def plot(iters: list[dict], out_dir: Path) -> list[Path]:
    """PNG plots of the tables across iterations (only those with data); [] without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(out_dir / name)

    hists = [(it["iter"], score_counts(it["summary"].get("score_histogram"))) for it in iters]
    hists = [(n, counts) for n, counts in hists if counts]
    if hists:
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / len(hists)
        for k, (n, counts) in enumerate(hists):
            ax.bar([s + k * width for s in range(len(SCORES))], [c / sum(counts) for c in counts], width, label=f"iter {n}")
        ax.set(xticks=[s + 0.4 - width / 2 for s in range(len(SCORES))], xticklabels=SCORES, xlabel="judge score",
               ylabel="fraction of judgements", title="Score distribution")
        ax.legend()
        save(fig, "scores.png")
    for key, name, title in (("reward", "reward_model.png", "Reward-model metrics"),
                             ("external", "reward_model_external.png", "Reward-model metrics, external set")):
        rm = [(it["iter"], it[key]) for it in iters if it[key]]
        if rm:
            plot_reward(plt, rm, title, lambda fig, name=name: save(fig, name))
    contests = [(f"M_N against {opponent.format(previous='_{N-1}')}",
                 [(it["iter"], it[key]) for it in iters if is_number(it[key].get("win"))])
                for key, opponent in COMPARISONS]
    contests = [(title, h2h) for title, h2h in contests if h2h]
    if contests:
        fig, axes = plt.subplots(1, len(contests), figsize=(7 * len(contests), 4), squeeze=False)
        for ax, (title, h2h) in zip(axes[0], contests):
            for k, (key, color) in enumerate((("win", "tab:green"), ("tie", "tab:gray"), ("loss", "tab:red"))):
                points = [(n, h[key], (h.get("intervals") or {}).get(key)) for n, h in h2h if is_number(h.get(key))]
                ax.errorbar([n + 0.06 * (k - 1) for n, _, _ in points], [v for _, v, _ in points],
                            yerr=error_bars(points), color=color, marker="o", capsize=3, label=key)
            for n, h in h2h:
                if h.get("self_judged"):
                    ax.annotate("self-judged", (n, 1.02), ha="center", fontsize=8)
            ax.set(ylim=(0, 1.08), xlim=(min(n for n, _ in h2h) - 0.5, max(n for n, _ in h2h) + 0.5),
                   xlabel="iteration", ylabel="fraction of prompts", xticks=[n for n, _ in h2h],
                   title=f"{title} (95% intervals)")
            ax.legend()
        save(fig, "head_to_head.png")
    curves = [(it["iter"], it["training"]) for it in iters if it["training"]]
    if curves:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        for ax, key, title in zip(axes, ("loss", "margins", "accuracy"),
                                  ("DPO loss", "reward margin (chosen - rejected)", "reward accuracy")):
            for n, steps in curves:
                points = [(r["step"], r[key]) for r in steps if is_number(r.get(key)) and is_number(r.get("step"))]
                if points:
                    ax.plot(*zip(*points), label=f"iter {n}")
            ax.set(xlabel="optimizer step", title=title)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend()
        save(fig, "dpo_training.png")
    series = {"answers, M_N (head to head)": [(it["iter"], it["h2h"].get("mean_chars_a")) for it in iters],
              "chosen (pairs)": [(it["iter"], it["summary"].get("mean_chars_chosen")) for it in iters],
              "rejected (pairs)": [(it["iter"], it["summary"].get("mean_chars_rejected")) for it in iters]}
    series = {k: [(n, v) for n, v in pts if is_number(v)] for k, pts in series.items()}
    if any(series.values()):
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, points in series.items():
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        # the paper's drift on its own scale (right), so that a small model's short answers stay readable
        paper = ax.twinx()
        paper.plot(list(PAPER_LENGTHS), list(PAPER_LENGTHS.values()), linestyle="--", color="black",
                   label="paper, M1-M3 (Llama-2-70B, AlpacaEval; right axis)")
        paper.set(ylabel="paper: mean characters", ylim=(0, None))
        ax.set(xlabel="iteration", ylabel="mean characters", title="Answer lengths", ylim=(0, None),
               xticks=sorted({n for points in series.values() for n, _ in points} | set(PAPER_LENGTHS)))
        handles = [h for axis in (ax, paper) for h in axis.get_legend_handles_labels()[0]]
        ax.legend(handles, [h.get_label() for h in handles], loc="upper left")
        save(fig, "lengths.png")
    return written


def report(run: Path, plots: bool = True) -> tuple[str, list[Path]]:
    """The Markdown report of a run directory, and the plots written (see the module doc)."""
    iters, baseline = read_run(run)
    pngs = plot(iters, run / "plots") if plots and iters else []
    lines = [f"# Run `{run.name}`", "",
             f"{len([it for it in iters if it['iter'] != 0])} iterations, from `{run}/iter*/` (eval/report.py, "
             f"{time.strftime('%Y-%m-%d %H:%M')}). \"-\": not recorded.", "",
             "Every reward-model metric and win / tie / loss rate comes with its 95% interval, `value [low, high]`: "
             "a seeded bootstrap over the prompts (eval/metrics.py), whose number is in the table. Two numbers whose "
             "intervals overlap may differ by chance alone: on 16 prompts a win rate's interval is about 50 points "
             "wide, so a 10-point difference there is noise.", "",
             "## The self-rewarding loop", "", *loop_table(iters), "",
             "## The model as a reward model (eval/reward_metrics.py)", "",
             "Against human rankings. Tied scores count as wrong in pairwise accuracy; correlations are "
             "averaged over prompts (eval/metrics.py). The paper's rows: Llama-2-70B on Open Assistant (Table 4).", "",
             *reward_table(iters, baseline), "", *judge_trend(iters), ""]
    if any(it["external"] for it in iters):
        ranked = next(it["external"].get("ranked") for it in iters if it["external"])
        scored = next(it["external"].get("score", "parsed") for it in iters if it["external"])
        lines += ["### On the external set", "",
                  f"`{ranked}`: clear-cut pairs nobody in this project wrote (a reference answer against a "
                  f"mismatched or cut one; data/external/README.md), scores {scored}.", "",
                  *reward_table(iters, baseline, "external"), "", *judge_trend(iters, "external"), ""]
    lines += [
             "## Instruction following: head to head (eval/head_to_head.py)", "",
             "Win / tie / loss of M_N against the previous model and (head_to_head.opponents) the SFT baseline, in % "
             "of the prompts with a verdict, each prompt judged in both orders. "
             "\"judge picks 1st\": the judge's share of decisive verdicts for the answer shown first (50% = no "
             "position bias). Length ratio above 1: M_N answers longer.", ""]
    external, own = head_to_head_table(iters, self_judged=False), head_to_head_table(iters, self_judged=True)
    lines += ["### Judged by a model that is not a contestant", "",
              *(external or ["(none" + (": every head to head of this run was self-judged)" if own else ")")]), ""]
    if own:
        lines += ["### Self-judged: not comparable with the paper's numbers", "",
                  "> The judge was one of the contestants, so these win rates are the model's opinion of itself, "
                  "not an independent evaluation, and they are not to be read beside the paper's GPT-4 win rates. "
                  "Name an outside judge (head_to_head.judge in the config) for numbers that can be.", "",
                  *own, ""]
    lines += ["## Outside benchmarks (eval/outside.py)", "",
              "AlpacaEval 2.0: win rate against GPT-4 Turbo, judged by GPT-4 Turbo, with the tool's standard error "
              "(the paper's predates length control); MT-Bench: GPT-4's mean single-answer score of 10.", "",
              *outside_table(iters, baseline), "",
              "## Checkpoint selection (eval/select_checkpoint.py)", "", *selection_table(iters), ""]
    if pngs:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.relative_to(run).as_posix()})" for p in pngs] + [""]
    elif plots:
        lines += ["(no plots: matplotlib is not installed; `pip install -e \".[plots]\"` adds it)", ""]
    return "\n".join(lines), pngs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run directory (runs/RUN)")
    parser.add_argument("--no-plots", action="store_true", help="write only the Markdown")
    args = parser.parse_args(argv)
    run = Path(args.run)
    if not run.is_dir():
        sys.exit(f"error: {run}: no such run directory")
    try:
        text, pngs = report(run, plots=not args.no_plots)
    except ValueError as e:
        sys.exit(f"error: {e}")
    out = run / "report.md"
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}" + (f" and {len(pngs)} plots in {run / 'plots'}" if pngs else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
