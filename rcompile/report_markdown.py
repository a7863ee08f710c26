"""Render a report (as data) to Markdown for people."""

from __future__ import annotations


def render_markdown(report: dict) -> str:
    """The report of `Report.as_dict()` as a Markdown document."""
    lines = [
        f"# rcompile report: {report['model']}",
        "",
        f"Scheme `{report['scheme']}`, target `{report['target']}`; "
        f"calibration: {_calibration(report['calibration'])}.",
        "",
        *_totals(report["totals"]),
    ]
    if report.get("accuracy"):
        lines += _accuracy(report["accuracy"])
    lines += _layers(report["layers"])
    lines += ["## Not quantized", ""]
    if report["skipped_layers"]:
        skipped = ", ".join(f"`{name}`" for name in report["skipped_layers"])
        lines += [f"Layers kept FP32 by overrides: {skipped}.", ""]
    ops = ", ".join(f"{op} x{count}" for op, count in report["unquantized_ops"].items())
    lines += [
        f"Nodes that stay FP32 (no multiplications in Ristretto's layer model): {ops or 'none'}.",
        "",
        "Software: " + ", ".join(f"{k} {v}" for k, v in report["software"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return [*lines, *("| " + " | ".join(row) + " |" for row in rows), ""]


def _totals(totals: dict) -> list[str]:
    n = _number
    rows = [
        ["layers quantized", str(totals["layers"]), ""],
        ["MACs per sample", n(totals["macs"]), ""],
        [
            "bit operations per sample (MACs x weight bits x input bits)",
            n(totals["bit_operations"]),
            "",
        ],
        ["parameters", n(totals["parameters"]), ""],
        [
            "parameter memory (bits)",
            n(totals["parameter_memory_bits"]),
            n(totals["fp32_parameter_memory_bits"]),
        ],
        ["parameter compression", f"{totals['parameter_compression'] or 1}x", "1x"],
        [
            "layer outputs, all layers (bits per sample)",
            n(totals["activation_output_bits"]),
            n(totals["fp32_activation_output_bits"]),
        ],
        ["largest layer output (bits per sample)", n(totals["largest_activation_output_bits"]), ""],
    ]
    return ["## Totals", "", *_table(["quantity", "quantized", "FP32"], rows)]


def _layers(layers: list[dict]) -> list[str]:
    header = [
        "layer",
        "op",
        "MACs",
        "params",
        "input",
        "weights",
        "bias",
        "output",
        "multiplier",
        "accumulator",
        "param bits",
        "output bits",
    ]
    rows = []
    for row in layers:
        formats, multiplier = row["formats"], row["multiplier"]
        rows.append(
            [
                f"`{row['node']}`",
                row["op_type"],
                _number(row["macs"]),
                _number(row["parameters"]),
                ", ".join(_fmt(f) for f in formats["inputs"]),
                _fmt(formats["weights"]),
                _fmt(formats["bias"]),
                _fmt(formats["output"]),
                f"{multiplier['weight_bits']}x{multiplier['activation_bits']} {_cost(multiplier)}",
                _accumulator(row["accumulator"]),
                _number(row["parameter_memory_bits"]),
                _number(row["activation_buffer_bits"]["output"]),
            ]
        )
    return ["## Layers", "", *_table(header, rows)]


def _cost(multiplier: dict) -> str:
    """What one product costs: a multiply, a shift, or shifts and adders."""
    if multiplier["kind"] != "shift-add":
        return multiplier["kind"]
    return f"{multiplier['shifts']} shifts + {multiplier['adders']} add"


def _accumulator(register: dict) -> str:
    """`32-bit saturate` (`exact` for a register that never overflows), with the bits
    calibration needed where it was measured."""
    bits = register["bits"]
    text = "exact" if bits is None else f"{bits}-bit {register['overflow']}"
    if "bits_needed" in register:
        text += f" (needs {register['bits_needed']})"
    return text


def _fmt(description: dict | None) -> str:
    if description is None:
        return "FP32"
    return f"`{description['name']}`" + (" per channel" if description.get("per_channel") else "")


def _number(value) -> str:
    return "n/a" if value is None else f"{value:,}"


def _calibration(calibration: dict) -> str:
    if not calibration.get("samples"):
        return "none"
    return f"{calibration['samples']} samples from `{calibration['source']}`"


def _accuracy(accuracy: dict) -> list[str]:
    rows = [
        [
            label,
            _percent(accuracy[label].get("top1")),
            _percent(accuracy[label].get("top5")),
            _percent(accuracy[label].get("agreement")),
        ]
        for label in ("fp32", "quantized")
    ]
    header = ["model", "top-1", "top-5", "top-1 agreement with FP32"]
    title = f"## Accuracy on `{accuracy['data']}` ({accuracy['samples']} samples)"
    return [title, "", *_table(header, rows)]


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"
