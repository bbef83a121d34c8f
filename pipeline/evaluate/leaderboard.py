"""Rank every backbone x classifier pair by grouped-CV accuracy and say which differences the data support.

Two kinds of paired evidence, both on shared material:

- **CV**: every pair was scored on the same grouped folds (the ``folds`` stage), so
  per-fold accuracy differences are paired. The Nadeau–Bengio corrected t-test
  compares the best pair with each other pair, and the best classifier of each
  backbone with the best of each other backbone; Holm's correction holds the
  family-wise error at ``ALPHA`` within each of those two families.
- **test**: an exact McNemar test on the same test images, each classifier against
  its own backbone's linear head, and the best pair against the runner-up.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.errors import PipelineError
from pipeline.evaluate.decision import LEAVES_OUT, METHOD
from pipeline.evaluate.statistics import corrected_paired_ttest, holm, mcnemar_exact

ALPHA = 0.05
REFERENCE = "head"  # every classifier is paired with its backbone's transfer-learning recipe


def pair_name(backbone: str, classifier: str) -> str:
    return f"{backbone}/{classifier}"


def mcnemar_tests(predictions: dict[str, pd.DataFrame], ranking: list[str]) -> dict[str, dict[str, Any]]:
    """McNemar p-values of each pair against its backbone's head, and of the best against the runner-up."""
    tests = {name: frame[frame["split"] == "test"].set_index("image") for name, frame in predictions.items()}
    correct = {name: test["true"] == test["predicted"] for name, test in tests.items()}
    images = sorted(set.intersection(*(set(c.index) for c in correct.values())))
    if any(len(c) != len(images) for c in correct.values()):
        raise PipelineError("Classifiers were tested on different images; re-run their train stages (dvc repro) "
                            "so that all are scored on the same test split.")
    correct = {name: c.loc[images].to_numpy() for name, c in correct.items()}
    out: dict[str, dict[str, Any]] = {name: {} for name in ranking}
    for name in ranking:
        backbone, classifier = name.split("/")
        head = pair_name(backbone, REFERENCE)
        if classifier != REFERENCE and head in correct:
            out[name]["mcnemar_p_vs_head"] = mcnemar_exact(correct[name], correct[head])["p_value"]
    if len(ranking) >= 2:
        best, runner_up = ranking[:2]
        out[best]["mcnemar_p_vs_runner_up"] = mcnemar_exact(correct[best], correct[runner_up])["p_value"]
    return out


def fold_scores(folds: dict[str, pd.DataFrame], shared: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-fold grouped-CV accuracy of each pair, checked to come from the ``shared`` folds (same sizes, same order)."""
    sizes = [len(test) for _, test in shared]
    out = {}
    for name, frame in folds.items():
        grouped = frame[frame["protocol"] == "grouped"].sort_values("fold")
        if grouped["n_test"].astype(int).tolist() != sizes:
            raise PipelineError(f"{name} was scored on other CV folds than artifacts/data/folds.csv (fold sizes "
                                "differ); re-run its train stage (dvc repro) so that every pair is paired.")
        out[name] = grouped["accuracy"].to_numpy(float)
    return out


def cv_tests(scores: dict[str, np.ndarray], ranking: list[str], *, test_fraction: float) -> dict[str, Any]:
    """Corrected paired t-tests on the shared folds, Holm-adjusted within each family of comparisons."""
    def family(duels: list[tuple[str, str]]) -> list[tuple[str, str, dict[str, float], float]]:
        """Each (a, b) with its test and its Holm-adjusted p-value, within this family."""
        raw = [corrected_paired_ttest(scores[a], scores[b], test_fraction=test_fraction) for a, b in duels]
        return [(a, b, r, float(h)) for (a, b), r, h in zip(duels, raw, holm([r["p_value"] for r in raw]))]

    best = ranking[0]
    pairs = {name: {"vs": best, "mean_difference": -r["mean_difference"], "p": r["p_value"], "p_holm": h}
             for _, name, r, h in family([(best, name) for name in ranking[1:]])}
    best_of: dict[str, str] = {}
    for name in ranking:  # ranked: the first pair met of a backbone is its best
        best_of.setdefault(name.split("/")[0], name)
    backbones = [{"a": a, "b": b, "mean_difference": r["mean_difference"], "p": r["p_value"], "p_holm": h}
                 for a, b, r, h in family(list(itertools.combinations(best_of.values(), 2)))]
    return {"best": best, "pairs": pairs, "best_per_backbone": best_of, "backbones": backbones}


def leaderboard(metrics: dict[str, dict[str, Any]], predictions: dict[str, pd.DataFrame],
                folds: dict[str, pd.DataFrame], shared: list[tuple[np.ndarray, np.ndarray]],
                backbones: dict[str, dict[str, Any]]) -> tuple[pd.DataFrame, dict]:
    """One row per pair (``<backbone>/<classifier>`` keys), best grouped-CV accuracy first, with the paired tests.

    ``folds`` are each pair's per-fold CV scores, ``shared`` the (train, test) folds they all used;
    ``backbones`` maps each backbone to what its extraction recorded (``feature_dim``, ``speed``).
    """
    ranking = sorted(metrics, key=lambda n: -metrics[n]["cv"]["accuracy_mean"])
    mcnemar = mcnemar_tests(predictions, ranking)
    scores = fold_scores(folds, shared)
    n = len(shared[0][0]) + len(shared[0][1])
    test_fraction = float(np.mean([len(test) for _, test in shared])) / n
    tests = cv_tests(scores, ranking, test_fraction=test_fraction)
    rows = []
    for rank, name in enumerate(ranking, start=1):
        m = metrics[name]
        backbone, classifier = name.split("/")
        cv, leaky, test = m["cv"], m["cv_leaky"], m["test"]
        vs_best = tests["pairs"].get(name, {})
        meta = backbones.get(backbone, {})
        rows.append({
            "rank": rank, "backbone": backbone, "classifier": classifier,
            # which algorithm ran, in words: "exact search", "exact RBF SVC", "nystroem 1000 + linear SVM"
            "method": (m.get("method") or {}).get("name", "–"),
            "cv_accuracy": cv["accuracy_mean"], "cv_accuracy_std": cv["accuracy_std"],
            "cv_accuracy_ci95_low": cv["accuracy_ci95"]["low"], "cv_accuracy_ci95_high": cv["accuracy_ci95"]["high"],
            "cv_p_vs_best": vs_best.get("p", np.nan), "cv_p_vs_best_holm": vs_best.get("p_holm", np.nan),
            "cv_leaky_accuracy": leaky["accuracy_mean"],
            "test_n": test["n"], "test_accuracy": test["accuracy"],
            "test_accuracy_ci95_low": test["accuracy_ci95"]["low"],
            "test_accuracy_ci95_high": test["accuracy_ci95"]["high"],
            "test_balanced_accuracy": test["balanced_accuracy"], "test_macro_f1": test["macro_f1"],
            "test_log_loss": test["log_loss"], "test_ece": test["ece"],
            "mcnemar_p_vs_head": mcnemar[name].get("mcnemar_p_vs_head", np.nan),
            "mcnemar_p_vs_runner_up": mcnemar[name].get("mcnemar_p_vs_runner_up", np.nan),
            "feature_dim": meta.get("feature_dim"),
            "extract_images_per_second": (meta.get("speed") or {}).get("images_per_second"),
            "fit_seconds": m.get("fit_seconds"), "pretrained": m.get("pretrained"),
        })
    paired = {name: {"test": mcnemar[name], "cv": tests["pairs"].get(name, {})} for name in ranking}
    return pd.DataFrame(rows), {"pairs": paired, "backbones": tests["backbones"], "test_fraction": test_fraction,
                                "best_per_backbone": tests["best_per_backbone"]}


# Costs within this share of each other count as equal: two classifiers on one backbone differ by microseconds,
# and one timing varies by more than that from run to run.
COST_TIE = 0.1
COST_COLUMNS = ("params_millions", "gflops", "images_per_second", "classifier_ms_per_1000", "model_bytes",
                "ms_per_image", "load_average")


def add_decision(table: pd.DataFrame, tests: dict[str, Any], result: dict[str, Any], names: list[str],
                 costs: dict[str, dict[str, Any]], *, margin: float) -> pd.DataFrame:
    """The leaderboard with each pair's P(best), rank interval, practical equivalence and cost (``result`` is
    ``decision.decide``'s over the pairs ``names``; ``costs`` each pair's ``decision.cost_of``), and the decision
    in words in ``tests["decision"]``."""
    pairs = [f"{b}/{c}" for b, c in zip(table["backbone"], table["classifier"])]  # the table's rows, ranked
    rows = [names.index(name) for name in pairs]
    table = table.assign(p_best=result["p_best"][rows], rank_low=result["rank_low"][rows],
                         rank_high=result["rank_high"][rows], equivalent=result["equivalent"][rows])
    cost = pd.DataFrame([costs[name] for name in pairs], columns=list(COST_COLUMNS), dtype=float)
    table = pd.concat([table, cost], axis=1)
    for name, r in zip(pairs, table.itertuples()):
        tests["pairs"][name].update(p_best=float(r.p_best), rank_interval=[int(r.rank_low), int(r.rank_high)],
                                    equivalent=bool(r.equivalent), cost=costs[name])
    best = pairs[0]
    equivalent = [name for name, r in zip(pairs, table.itertuples()) if r.equivalent]
    priced = table[table["equivalent"] & table["ms_per_image"].notna()]
    cheapest = None
    if not priced.empty:  # the best-ranked of the pairs that cost about the least
        cheapest = priced[priced["ms_per_image"] <= (1 + COST_TIE) * priced["ms_per_image"].min()].iloc[0]
    tests["decision"] = {
        "best": best, "equivalence": margin, "equivalent": equivalent,
        "cheapest_equivalent": None if cheapest is None else f"{cheapest['backbone']}/{cheapest['classifier']}",
        "sentence": cheapest_sentence(table, cheapest, best, margin), "method": METHOD, "leaves_out": LEAVES_OUT,
        "selection": result["selection"],
    }
    return table


def cheapest_sentence(table: pd.DataFrame, cheapest: pd.Series | None, best: str, margin: float) -> str:
    n = int(table["equivalent"].sum())
    if cheapest is None:
        return (f"{n} pair(s) are practically equivalent to the best ({best}); no cost was measured to choose "
                "among them.")
    name = f"{cheapest['backbone']}/{cheapest['classifier']}"
    top = table.iloc[0]
    if name == best:
        return (f"The best pair, {best}, is also among the cheapest of the {n} practically equivalent to it "
                f"({cheapest['ms_per_image']:.3g} ms per image on this machine; costs within {COST_TIE:.0%} of "
                "each other count as equal).")
    saving = f", {top['ms_per_image'] / cheapest['ms_per_image']:.3g} times cheaper" if pd.notna(top["ms_per_image"]) \
        else ""
    return (f"The cheapest pair practically equivalent to the best is {name}: {cheapest['ms_per_image']:.3g} ms per "
            f"image on this machine against the best's {top['ms_per_image']:.3g}{saving}, grouped-CV accuracy "
            f"{cheapest['cv_accuracy']:.3f} against {top['cv_accuracy']:.3f} (no pair is shown better than it by "
            f"more than {margin}).")


def summary(row: Any) -> dict[str, Any]:
    """The few figures of a pair that ``dvc metrics show`` prints, one line per pair."""
    figures = {"cv_accuracy": row.cv_accuracy, "cv_low": row.cv_accuracy_ci95_low, "cv_high": row.cv_accuracy_ci95_high,
               "test_accuracy": row.test_accuracy, "p_best": row.p_best, "ms_per_image": row.ms_per_image}
    return {**{k: None if pd.isna(v) else round(float(v), 4) for k, v in figures.items()},
            "equivalent": bool(row.equivalent)}


def decision_lines(table: pd.DataFrame, decision: dict[str, Any]) -> list[str]:
    """Which pair to use: P(best), rank interval, practical equivalence and cost per pair, and the winner's curse."""
    selection = decision["selection"]
    low, high = selection["corrected_ci95"]
    lines = ["", "## Which pair to use", "",
             f"*P(best)* and the 95% rank interval come from a {decision['method']}; they leave out "
             f"{decision['leaves_out']}, which the corrected t-tests above include, so those can leave more pairs "
             "within noise of the best than this set holds. *≈ best*: practically equivalent to the best, that is "
             f"no pair is shown better by more than {decision['equivalence']} accuracy (simultaneous 95% bootstrap "
             "bounds, so the truly best pair is in this set about 95% of the time). Cost was measured on this "
             "machine by the cost stage: the backbone's forward pass alone (the 1-minute load average beside it) plus "
             "the classifier's prediction.", "",
             f"- {decision['sentence']}",
             f"- Winner's curse: the best out-of-fold accuracy, {selection['observed']:.3f}, belongs to a pair picked "
             f"among {selection['pairs']} on the very folds that score it; corrected for that selection "
             f"({selection['method']}) it is {selection['corrected']:.3f} [{low:.3f}, {high:.3f}].", "",
             "| # | pair | grouped CV acc. | P(best) | rank (95%) | ≈ best | params (M) | GFLOPs | backbone img/s "
             "| classifier ms/1000 | model MB | ms/image | load |",
             "|---:|---|---:|---:|---:|:-:|---:|---:|---:|---:|---:|---:|---:|"]

    for r in table.itertuples():
        lines.append(f"| {r.rank} | {r.backbone}/{r.classifier} | {r.cv_accuracy:.3f} | {r.p_best:.3f} | "
                     f"{r.rank_low}–{r.rank_high} | {'✓' if r.equivalent else ''} | "
                     f"{number(r.params_millions, '.1f')} | "
                     f"{number(r.gflops, '.2f')} | {number(r.images_per_second, '.1f')} | "
                     f"{number(r.classifier_ms_per_1000, '.1f')} | {number(r.model_bytes / 1e6, '.2f')} | "
                     f"{number(r.ms_per_image, '.1f')} | {number(r.load_average, '.1f')} |")
    return lines


def _p(value: float) -> str:
    if value is None or np.isnan(value):
        return "–"
    mark = "" if value < ALPHA else " (n.s.)"
    return f"{value:.3f}{mark}"


def number(value: Any, spec: str) -> str:
    """``value`` formatted by ``spec``; a dash where it is missing (None or NaN)."""
    return "–" if value is None or pd.isna(value) else format(value, spec)


def grid(table: pd.DataFrame) -> pd.DataFrame:
    """Grouped-CV accuracy as a backbone x classifier table (rows in order of each backbone's best pair)."""
    frame = table.pivot(index="backbone", columns="classifier", values="cv_accuracy")
    order = list(dict.fromkeys(table["backbone"]))
    columns = list(dict.fromkeys(table.sort_values("classifier")["classifier"]))
    return frame.loc[order, columns]


def in_words(table: pd.DataFrame, tests: dict[str, Any]) -> list[str]:
    """Which differences the data support, in plain sentences (Holm-adjusted p < ALPHA)."""
    best = f"{table['backbone'].iloc[0]}/{table['classifier'].iloc[0]}"
    worse = [f"{r.backbone}/{r.classifier}" for r in table.itertuples() if r.cv_p_vs_best_holm < ALPHA]
    level = [f"{r.backbone}/{r.classifier}" for r in table.iloc[1:].itertuples() if not r.cv_p_vs_best_holm < ALPHA]
    lines = [f"- Best pair by grouped CV: **{best}**."]
    if len(table) > 1:
        lines.append(f"- The data show it better than {', '.join(worse)} (Holm-adjusted p < {ALPHA})." if worse else
                     f"- The data do not show it better than any other pair (every Holm-adjusted p ≥ {ALPHA}).")
        if worse and level:
            lines.append(f"- Within noise of it: {', '.join(level)}.")
    duels = tests["backbones"]
    if duels:
        supported = [d for d in duels if d["p_holm"] < ALPHA]
        for d in supported:
            winner, loser = (d["a"], d["b"]) if d["mean_difference"] > 0 else (d["b"], d["a"])
            lines.append(f"- Backbones: {winner.split('/')[0]} beats {loser.split('/')[0]} (best classifier of "
                         f"each, {abs(d['mean_difference']):.3f} accuracy, Holm p = {d['p_holm']:.3f}).")
        if not supported:
            lines.append(f"- Backbones: no difference between them is supported by the data (best classifier of "
                         f"each, every Holm-adjusted p ≥ {ALPHA}).")
    return lines


def held_out_line(splits: dict[str, dict[str, Any]]) -> str:
    """How valid and test were made (from the audit's splits.csv): a folder, a list, or carved from train."""
    parts = [f"**{s}**: {entry['images']} images, {entry['how']}"
             + (f" ({entry['dropped']} dropped: their picture is in an earlier split)" if entry.get("dropped") else "")
             for s, entry in splits.items() if s != "train"]
    return "Held-out images: " + "; ".join(parts) + "."


def render_markdown(table: pd.DataFrame, tests: dict[str, Any], *,
                    splits: dict[str, dict[str, Any]] | None = None) -> str:
    """The leaderboard for people; ``splits``: how each split was made (``carving.split_origins``)."""
    lines = ["# Backbone and classifier comparison", ""]
    unverified = list(dict.fromkeys(table.loc[~table["pretrained"].fillna(False).astype(bool), "backbone"]))
    if unverified:
        lines += [f"> **RANDOM OR UNVERIFIED BACKBONE WEIGHTS (pretrained: false): {', '.join(unverified)}.** "
                  "Their numbers test the machinery only; they say nothing about those backbones.", ""]
    lines += [
        "Every backbone/classifier pair, ranked by accuracy under cross-validation grouped by original picture "
        "(mean ± std over folds, 95% interval with the Nadeau–Bengio correction). All pairs are scored on the "
        "same folds, so *p vs best* is a corrected paired t-test on their per-fold differences, Holm-adjusted "
        "over the pairs shown. *Leaky CV* is plain k-fold on the same data, where copies of one picture land on "
        "both sides: shown only to make the inflation visible. Test accuracy has a Wilson 95% interval; test "
        "p-values are exact McNemar tests on the same test images (against the same backbone's head, and the "
        f"best against the runner-up); *(n.s.)* marks p ≥ {ALPHA}: the data do not support a difference.", "",
        *([held_out_line(splits), ""] if splits else []),
        *in_words(table, tests), "",
        "| # | backbone | classifier | method | grouped CV acc. | 95% CI | p vs best (Holm) | leaky CV acc. "
        "| test acc. [95% CI] | test bal. acc. | test macro-F1 | log loss | ECE | p vs head | p vs runner-up "
        "| dim | extract img/s |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.rank} | {r.backbone} | {r.classifier} | {r.method} | {r.cv_accuracy:.3f} ± {r.cv_accuracy_std:.3f} | "
            f"[{r.cv_accuracy_ci95_low:.3f}, {r.cv_accuracy_ci95_high:.3f}] | {_p(r.cv_p_vs_best_holm)} | "
            f"{r.cv_leaky_accuracy:.3f} | "
            f"{r.test_accuracy:.3f} [{r.test_accuracy_ci95_low:.3f}, {r.test_accuracy_ci95_high:.3f}] | "
            f"{r.test_balanced_accuracy:.3f} | {r.test_macro_f1:.3f} | {r.test_log_loss:.3f} | {r.test_ece:.3f} | "
            f"{_p(r.mcnemar_p_vs_head)} | {_p(r.mcnemar_p_vs_runner_up)} | {r.feature_dim or '–'} | "
            f"{number(r.extract_images_per_second, ',.0f')} |"
        )
    cells = grid(table)
    lines += ["", "## Grouped-CV accuracy, backbone × classifier", "",
              "| backbone | " + " | ".join(cells.columns) + " |", "|---|" + "---:|" * len(cells.columns)]
    for backbone, row in cells.iterrows():
        lines.append(f"| {backbone} | " + " | ".join("–" if np.isnan(v) else f"{v:.3f}" for v in row) + " |")
    duels = tests["backbones"]
    if duels:
        lines += ["", "## Backbones compared (the best classifier of each, on the shared folds)", "",
                  "| A | B | mean accuracy difference (A − B) | p | p (Holm) |", "|---|---|---:|---:|---:|"]
        lines += [f"| {d['a']} | {d['b']} | {d['mean_difference']:+.3f} | {d['p']:.3f} | {_p(d['p_holm'])} |"
                  for d in duels]
    if "decision" in tests:
        lines += decision_lines(table, tests["decision"])
    lines += ["", f"{int(table['test_n'].iloc[0])} test images: one image moves test accuracy by "
              f"{1 / table['test_n'].iloc[0]:.1%}."]
    return "\n".join(lines) + "\n"
