"""The search's results for people and machines: every configuration scored with its cost
and whether it is Pareto-optimal, a plot of metric against cost (SVG), and a summary in
Ristretto's form."""

from __future__ import annotations

from html import escape

from rcompile.search.evaluator import Evaluation
from rcompile.search.procedures import Sweep
from rcompile.search.runner import TOLERANCE


def pareto(evaluations: list[Evaluation]) -> list[bool]:
    """For each evaluation, whether no other is at least as cheap with at most its bound of
    the drop (what the margin judges), and better in one of the two."""
    flags = []
    for candidate in evaluations:
        dominated = any(
            other.cost <= candidate.cost
            and other.drop_bound <= candidate.drop_bound
            and (other.cost < candidate.cost or other.drop_bound < candidate.drop_bound)
            for other in evaluations
        )
        flags.append(not dominated)
    return flags


def rows(evaluations: list[Evaluation], margin: float) -> list[dict]:
    """The search table: every configuration scored, in the order scored."""
    optimal = pareto(evaluations)
    return [
        {
            "label": e.configuration.label,
            "score": round(e.score, 4),
            "drop_bound": round(e.drop_bound, 4),
            "divergence": float(f"{e.divergence:.6g}"),
            "cost": e.cost,
            "within_margin": e.drop_bound <= margin + TOLERANCE,
            "pareto": flag,
            "seconds": round(e.seconds, 4),
            "plan": e.plan.as_dict()["layers"],
        }
        for e, flag in zip(evaluations, optimal, strict=True)
    ]


def ristretto_summary(
    fp32_score: float,
    metric: str,
    sweeps: list[Sweep],
    chosen: Evaluation | None,
    margin: float,
    confidence: float,
) -> list[str]:
    """The terminal summary, in the form Ristretto prints it."""
    lines = [
        "-" * 30,
        f"Network {metric} analysis (margin {margin:g} points, judged on the "
        f"{confidence:g} upper bound of the drop)",
        f"Baseline 32bit float: {fp32_score:.2f}",
    ]
    for sweep in sweeps:
        lines.append(f"{sweep.title}:")
        lines += [
            f"  {width}bit: {score:.2f}"
            for width, score in sorted(sweep.scores.items(), reverse=True)
        ]
        lines.append(
            f"  smallest within margin: {sweep.chosen}bit"
            if sweep.chosen
            else "  none within margin"
        )
    if chosen is None:
        lines.append("No configuration stays within the margin. Please fine-tune.")
    else:
        lines += [
            f"Chosen: {chosen.configuration.label}",
            f"{metric}: {chosen.score:.2f} (drop at most {chosen.drop_bound:.2f} at "
            f"{confidence:g} confidence)",
        ]
    return [*lines, "-" * 30]


def plot_svg(
    evaluations: list[Evaluation],
    threshold: float,
    chosen: Evaluation | None,
    cost_name: str,
    metric: str,
) -> str:
    """A scatter plot of metric against cost; Pareto-optimal points filled, the chosen one
    ringed, the margin as a dashed line."""
    width, height, pad = 640, 420, 60
    costs = [e.cost for e in evaluations] or [0]
    scores = [e.score for e in evaluations] + [threshold]
    low_cost, high_cost = min(costs), max(costs) or 1
    low_score, high_score = min(scores), max(scores)

    def x(cost: float) -> float:
        return pad + (cost - low_cost) / max(high_cost - low_cost, 1) * (width - 2 * pad)

    def y(score: float) -> float:
        return (
            height
            - pad
            - (score - low_score) / max(high_score - low_score, 1e-9) * (height - 2 * pad)
        )

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
        f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle">'
        f"{escape(cost_name)} cost (bits)</text>",
        f'<text x="15" y="{height / 2}" transform="rotate(-90 15 {height / 2})" '
        f'text-anchor="middle">{escape(metric)}</text>',
        f'<text x="{pad}" y="{height - pad + 15}">{low_cost:,}</text>',
        f'<text x="{width - pad}" y="{height - pad + 15}" text-anchor="end">{high_cost:,}</text>',
        f'<text x="{pad - 5}" y="{y(high_score)}" text-anchor="end">{high_score:.1f}</text>',
        f'<text x="{pad - 5}" y="{y(low_score)}" text-anchor="end">{low_score:.1f}</text>',
        f'<line x1="{pad}" y1="{y(threshold)}" x2="{width - pad}" y2="{y(threshold)}" '
        'stroke="gray" stroke-dasharray="4 4"/>',
    ]
    for evaluation, optimal in zip(evaluations, pareto(evaluations), strict=True):
        fill = "steelblue" if optimal else "none"
        parts.append(
            f'<circle cx="{x(evaluation.cost):.1f}" cy="{y(evaluation.score):.1f}" r="4" '
            f'fill="{fill}" stroke="steelblue"><title>{escape(evaluation.configuration.label)}'
            "</title></circle>"
        )
    if chosen is not None:
        parts.append(
            f'<circle cx="{x(chosen.cost):.1f}" cy="{y(chosen.score):.1f}" r="9" fill="none" '
            'stroke="crimson" stroke-width="2"/>'
        )
    return "\n".join([*parts, "</svg>", ""])
