"""The study report's applicability-domain section: per model and selection, the AUROC table
of every trust score on every test split and the error-retention curves of the key scores,
for the largest evaluated cell. Reads what `mlipdiv.study.domain_step.study_step` wrote."""

from __future__ import annotations

import html

import pandas as pd
from matplotlib.figure import Figure

from mlipdiv.domain.evaluate import ORACLE, DomainEvaluation, RetentionCurve
from mlipdiv.domain.reference import SCORE_DESCRIPTIONS
from mlipdiv.files import reading
from mlipdiv.report.figures import split_name
from mlipdiv.report.sections import Section
from mlipdiv.study.config import StudyConfig
from mlipdiv.study.domain_step import AUROC_CSV, evaluation_path
from mlipdiv.study.layout import StudyPaths

# Drawn in the retention figure when the run has them: latent, density, model-free, committee.
KEY_SCORES = ("latent_distance_max", "density_nll_max", "tanimoto_distance", "quests_dh_max",
              "force_std_max")
UNITS = {"energy": "meV/atom", "forces": "meV/Å"}
EMPTY = "–"


def _quantity(config: StudyConfig) -> str:
    """The error the study's advice is about: energy or forces."""
    return "forces" if config.advice.metric.startswith("forces") else "energy"


def _cell(value: float) -> str:
    return EMPTY if pd.isna(value) else f"{value:.2f}"


def auroc_html(rows: pd.DataFrame, quantity: str) -> str:
    """Score × split table of one run: OOD-vs-in-distribution AUROC, high-error AUROC and
    Spearman correlation with the error."""
    splits = list(dict.fromkeys(rows["split"]))
    columns = (("auroc_vs_in_distribution", "vs ID"),
               (f"auroc_high_error_{quantity}", "high error"),
               (f"spearman_{quantity}", "Spearman"))
    header = ("<tr><th rowspan='2'>score</th>"
              + "".join(f"<th colspan='{len(columns)}'>{html.escape(s.upper())}</th>"
                        for s in splits)
              + "</tr><tr>" + "".join(f"<th>{label}</th>" for _ in splits for _, label in columns)
              + "</tr>")
    body = []
    for score, group in rows.groupby("score", sort=False):
        by_split = group.set_index("split")
        cells = "".join(f"<td>{_cell(by_split.at[split, key])}</td>" if split in by_split.index
                        else f"<td>{EMPTY}</td>" for split in splits for key, _ in columns)
        body.append(f"<tr><th title='{html.escape(SCORE_DESCRIPTIONS.get(score, ''))}'>"
                    f"{html.escape(score)}</th>{cells}</tr>")
    return f"<table>{header}{''.join(body)}</table>"


def retention_figure(curves: list[RetentionCurve], quantity: str, title: str) -> Figure | None:
    """Error-retention curves, one panel per split: the key scores and the oracle."""
    import matplotlib.pyplot as plt


    chosen = [c for c in curves if c.quantity == quantity
              and (c.score in KEY_SCORES or c.score == ORACLE)]
    splits = list(dict.fromkeys(c.split for c in chosen))
    if not splits:
        return None
    fig, axes = plt.subplots(1, len(splits), figsize=(3.6 * len(splits), 3.4), squeeze=False,
                             sharey=True)
    for ax, split in zip(axes[0], splits, strict=True):
        for curve in (c for c in chosen if c.split == split):
            oracle = curve.score == ORACLE
            ax.plot(curve.fraction, curve.mean_error, label=curve.score,
                    color="black" if oracle else None, linestyle="--" if oracle else "-")
        ax.set_title(split_name(split), fontsize=10)
        ax.set_xlabel("fraction of predictions kept")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(f"mean {quantity} error of kept ({UNITS[quantity]})")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def study_section(paths: StudyPaths, config: StudyConfig) -> Section | None:
    """The report section of the domain step, or None when the step wrote nothing."""
    table_path = paths.domain / AUROC_CSV
    if not table_path.exists():
        return None
    table = pd.read_csv(table_path)
    quantity = _quantity(config)
    section = Section("Applicability domain", (
        f"<p>Each trust score (higher = less trusted) of the largest trained cell (the most "
        f"training conformers, so the richest reference of what the model has seen), on every "
        f"test split: AUROC for telling the split from the in-distribution test split (vs ID: "
        f"the cell's own CF set, unseen conformers of the molecules it trained on), "
        f"AUROC for finding the conformers whose {quantity} error exceeds the validation 90th "
        f"percentile (high error), and Spearman correlation of score and error. 0.5 is chance; "
        f"{EMPTY} is undefined (the in-distribution split itself, a split with all or none of "
        f"its conformers above the error level, or a constant score). Every evaluated cell is "
        f"in {html.escape(str(table_path.relative_to(paths.root)))}.</p>"))
    headline = (table.sort_values(["N", "M"], ascending=False)
                .drop_duplicates(["model", "selection"]).sort_values(["model", "selection"]))
    for run in headline.itertuples():
        label = f"{run.model} ({run.selection}), {run.cell}, N = {run.N}"
        rows = table[(table.model == run.model) & (table.cell == run.cell)]
        section.html += f"<h3>{html.escape(label)}</h3>{auroc_html(rows, quantity)}"
        path = evaluation_path(paths.root, run.cell, run.model)
        with reading(path, "domain evaluation", "rerun the study (its domain step redoes it)"):
            evaluation = DomainEvaluation.model_validate_json(path.read_text())
        figure = retention_figure(evaluation.curves, quantity, label)
        if figure is not None:
            section.figures.append((
                f"domain_retention_{run.model}_{run.selection}",
                f"error–retention curves ({label}): mean {quantity} error of the predictions "
                "kept as the least trusted are removed; the oracle ranks by the error itself",
                figure))
    return section
