"""The leaderboard: Bradley-Terry scores on the Elo scale with bootstrap intervals, as Chatbot Arena computes them.

Follows FastChat's fastchat/serve/monitor/rating_systems.py (compute_bt, compute_bootstrap_bt):
P(A beats B) = 1 / (1 + 10 ** ((R_B - R_A) / 400)), fitted by maximum likelihood over all battles,
a tie (or "both bad") counting as half a win for each side. Differences from FastChat, and why:
  - Newton's method in numpy instead of scipy's L-BFGS (scipy is not a dependency here);
  - a small L2 prior on the strengths, so a variant that has only ever won gets a large but finite
    score instead of running off to infinity; it also centres the scores, so the average variant is 1000;
  - rank is FastChat's "rank (UB)": 1 + the number of variants that are better beyond doubt
    (whose interval lies wholly above this one's), so variants whose intervals overlap share a rank.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .votes import Vote

SCALE = 400.0
BASE = 10.0
INIT_RATING = 1000.0
DEFAULT_ROUNDS = 200
DEFAULT_SEED = 0
DEFAULT_PRIOR = 0.1  # L2 strength on natural-log strengths: like a N(0, 3.2²) prior, about ±550 Elo points
NEWTON_TOLERANCE = 1e-9
NEWTON_MAX_STEPS = 100
OUTCOME_FOR_A = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}
LEADERBOARD_COLUMNS = ["rank", "variant", "score", "ci_low", "ci_high", "battles", "wins", "losses", "ties",
                       "win_rate"]


@dataclass
class Battles:
    """Votes between two different variants, deduplicated: each distinct (a, b, outcome) and how often it occurred."""

    variants: list[str]
    pairs: np.ndarray  # (k, 2) indices into variants: side a, side b
    outcomes: np.ndarray  # (k,) 1.0 a won, 0.5 tie or both bad, 0.0 b won
    counts: np.ndarray  # (k,) how many votes had this pairing and outcome

    @property
    def total(self) -> int:
        return int(self.counts.sum())


def variants_in_order(votes: list[Vote]) -> list[str]:
    """Every variant named in the votes, in order of first appearance."""
    return list(dict.fromkeys(name for vote in votes for name in (vote.variant_a, vote.variant_b)))


def collect_battles(votes: list[Vote], variants: list[str]) -> Battles:
    # A variant against itself tells nothing about which variant is better, so such votes never reach the fit.
    index = {name: i for i, name in enumerate(variants)}
    rows = [(index[v.variant_a], index[v.variant_b], OUTCOME_FOR_A[v.winner]) for v in votes
            if v.variant_a != v.variant_b]
    if not rows:
        return Battles(variants, np.zeros((0, 2), dtype=int), np.zeros(0), np.zeros(0))
    unique, counts = np.unique(np.array(rows, dtype=float), axis=0, return_counts=True)
    return Battles(variants, unique[:, :2].astype(int), unique[:, 2], counts.astype(float))


def negative_log_posterior(theta: np.ndarray, battles: Battles, weights: np.ndarray, prior: float) -> float:
    diff = theta[battles.pairs[:, 0]] - theta[battles.pairs[:, 1]]
    y = battles.outcomes
    log_likelihood = -(y * np.logaddexp(0.0, -diff) + (1.0 - y) * np.logaddexp(0.0, diff))
    return float(-(weights * log_likelihood).sum() + 0.5 * prior * theta @ theta)


def gradient_and_hessian(theta: np.ndarray, battles: Battles, weights: np.ndarray, prior: float):
    a, b = battles.pairs[:, 0], battles.pairs[:, 1]
    p_a = 0.5 * (1.0 + np.tanh(0.5 * (theta[a] - theta[b])))  # logistic, without overflow
    residual = weights * (p_a - battles.outcomes)
    curvature = weights * p_a * (1.0 - p_a)
    grad = prior * theta
    np.add.at(grad, a, residual)
    np.add.at(grad, b, -residual)
    hess = prior * np.eye(len(theta))
    np.add.at(hess, (a, a), curvature)
    np.add.at(hess, (b, b), curvature)
    np.add.at(hess, (a, b), -curvature)
    np.add.at(hess, (b, a), -curvature)
    return grad, hess


def fit_bradley_terry(battles: Battles, weights: np.ndarray, prior: float = DEFAULT_PRIOR) -> np.ndarray:
    """Maximum a-posteriori strengths (natural log-odds units) by damped Newton steps; the problem is convex."""
    theta = np.zeros(len(battles.variants))
    loss = negative_log_posterior(theta, battles, weights, prior)
    for _ in range(NEWTON_MAX_STEPS):
        grad, hess = gradient_and_hessian(theta, battles, weights, prior)
        step = np.linalg.solve(hess, grad)
        if np.max(np.abs(step)) < NEWTON_TOLERANCE:
            break
        moved, loss = damped_step(theta, step, loss, battles, weights, prior)
        if moved is theta:
            break
        theta = moved
    return theta


def damped_step(theta, step, loss, battles, weights, prior) -> tuple[np.ndarray, float]:
    """Halve the Newton step until the loss does not rise: a full step can overshoot far from the optimum."""
    size = 1.0
    while size > 1e-6:
        candidate = theta - size * step
        candidate_loss = negative_log_posterior(candidate, battles, weights, prior)
        if candidate_loss <= loss:
            return candidate, candidate_loss
        size /= 2
    return theta, loss  # no smaller step helps either: already at the optimum up to rounding


def to_elo_scale(theta: np.ndarray) -> np.ndarray:
    return INIT_RATING + theta * SCALE / math.log(BASE)


def bootstrap_scores(battles: Battles, rounds: int, seed: int, prior: float) -> np.ndarray:
    """(rounds, variants) scores, each fitted on the battles resampled with replacement.

    Resampling battles one by one is the same as drawing how often each distinct battle occurs
    from a multinomial, which is what FastChat does and is much faster.
    """
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(battles.total, battles.counts / battles.total, size=rounds)
    return np.array([to_elo_scale(fit_bradley_terry(battles, draw.astype(float), prior)) for draw in draws])


def tally(votes: list[Vote], variants: list[str]) -> pd.DataFrame:
    """battles, wins, losses, ties per variant; "both bad" counts as a tie.

    A vote with the same variant on both sides counts as one battle and one tie for it: whichever
    side won, the same variant also lost.
    """
    counts = {name: {"battles": 0, "wins": 0, "losses": 0, "ties": 0} for name in variants}
    for vote in votes:
        if vote.variant_a == vote.variant_b or vote.winner in ("tie", "both_bad"):
            outcomes = {vote.variant_a: "ties", vote.variant_b: "ties"}
        else:
            winner, loser = (vote.variant_a, vote.variant_b) if vote.winner == "a" else (vote.variant_b, vote.variant_a)
            outcomes = {winner: "wins", loser: "losses"}
        for name, column in outcomes.items():
            counts[name]["battles"] += 1
            counts[name][column] += 1
    return pd.DataFrame.from_dict(counts, orient="index")


def rank_upper_bound(ci_low: np.ndarray, ci_high: np.ndarray) -> list:
    return [pd.NA if np.isnan(high) else 1 + int(np.sum(ci_low > high)) for high in ci_high]


def leaderboard(votes: list[Vote], rounds: int = DEFAULT_ROUNDS, seed: int = DEFAULT_SEED,
                prior: float = DEFAULT_PRIOR) -> pd.DataFrame:
    """One row per variant, best score first.

    Columns: rank, variant, score, ci_low, ci_high, battles, wins, losses, ties, win_rate.
    score: Bradley-Terry on the Elo scale (400 points = 10:1 odds; the average variant is 1000).
    ci_low / ci_high: 2.5th and 97.5th percentiles of `rounds` bootstrap refits (fixed `seed`), widened
    if needed so that they always contain the score (a skewed bootstrap can leave the fit just outside).
    win_rate: (wins + ties / 2) / battles, so ties and "both bad" count as half a win.
    A variant that only ever met itself has no score (NaN) and no rank; it is listed last.
    """
    variants = variants_in_order(votes)
    if not variants:
        return pd.DataFrame({column: [] for column in LEADERBOARD_COLUMNS})
    battles = collect_battles(votes, variants)
    rated = np.zeros(len(variants), dtype=bool)
    rated[battles.pairs.ravel()] = True
    scores = np.full(len(variants), np.nan)
    ci_low, ci_high = scores.copy(), scores.copy()
    if battles.total:
        scores = to_elo_scale(fit_bradley_terry(battles, battles.counts, prior))
        ci_low, ci_high = scores.copy(), scores.copy()
        if rounds > 0:
            low, high = np.percentile(bootstrap_scores(battles, rounds, seed, prior), [2.5, 97.5], axis=0)
            ci_low, ci_high = np.minimum(low, scores), np.maximum(high, scores)
        for column in (scores, ci_low, ci_high):
            column[~rated] = np.nan
    table = tally(votes, variants)
    table.insert(0, "variant", variants)
    table.insert(1, "score", scores)
    table.insert(2, "ci_low", ci_low)
    table.insert(3, "ci_high", ci_high)
    table["win_rate"] = (table["wins"] + table["ties"] / 2) / table["battles"]
    table = table.sort_values(["score", "variant"], ascending=[False, True], na_position="last")
    table.insert(0, "rank", pd.array(rank_upper_bound(table["ci_low"].to_numpy(), table["ci_high"].to_numpy()),
                                     dtype="Int64"))
    return table.reset_index(drop=True)[LEADERBOARD_COLUMNS]


def head_to_head(votes: list[Vote]) -> pd.DataFrame:
    """Win rate of the row variant over the column variant (ties and "both bad" count half).

    NaN where the two never met, and on the diagonal. Rows and columns are in leaderboard order.
    """
    order = leaderboard(votes, rounds=0)["variant"].tolist()
    index = {name: i for i, name in enumerate(order)}
    points = np.zeros((len(order), len(order)))
    games = np.zeros_like(points)
    for vote in votes:
        if vote.variant_a == vote.variant_b:
            continue  # a variant against itself is not a head-to-head result
        a, b = index[vote.variant_a], index[vote.variant_b]
        points[a, b] += OUTCOME_FOR_A[vote.winner]
        points[b, a] += 1.0 - OUTCOME_FOR_A[vote.winner]
        games[a, b] += 1
        games[b, a] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(games > 0, points / games, np.nan)
    table = pd.DataFrame(rates, index=pd.Index(order, name="variant"), columns=pd.Index(order, name="opponent"))
    return table


def head_to_head_figure(table: pd.DataFrame) -> Figure:
    """A heatmap of `head_to_head(...)` with the win rate written in each cell.

    Built on a bare Figure with the Agg canvas, not pyplot, so nothing is registered globally and
    the caller never needs to close it.
    """
    size = max(4.0, 1.0 + 0.9 * len(table))
    figure = Figure(figsize=(size + 1.5, size), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if table.empty:
        axes.text(0.5, 0.5, "No battles yet", ha="center", va="center", fontsize=14)
        axes.set_axis_off()
        return figure
    values = table.to_numpy(dtype=float)
    # grey marks pairs that never met, so they cannot be mistaken for an even 0.50 (white)
    cmap = colormaps["RdBu"].with_extremes(bad="#d9d9d9")
    image = axes.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="win rate of row over column")
    annotate_cells(axes, values)
    axes.set_xticks(range(len(table.columns)), labels=table.columns, rotation=45, ha="right")
    axes.set_yticks(range(len(table.index)), labels=table.index)
    axes.set_xlabel("opponent")
    axes.set_ylabel("variant")
    axes.set_title("Head to head (ties count half)")
    return figure


def annotate_cells(axes, values: np.ndarray) -> None:
    for (row, column), value in np.ndenumerate(values):
        if np.isnan(value):
            continue
        # dark text on the pale middle of the colour map, white on its saturated ends
        color = "white" if abs(value - 0.5) > 0.3 else "black"
        axes.text(column, row, f"{value:.2f}", ha="center", va="center", color=color, fontsize=10)
