"""Values known to lie on a grid, followed through the graph while it is lowered.

A layer's quantized DFP output holds multiples of its step within its range. A Relu or
constant Clip with bounds on that grid, an op that only picks or moves values, and an exact
sum of two such values keep it there. Knowing this, a lowering can leave out an input
quantizer that would change nothing, and make a clamp that clamps nothing an Identity.
"""

from __future__ import annotations

import math

import onnx

from rcompile.formats import DFP, Format
from rcompile.graph import Constants
from rcompile.passes.layers import clamp_bounds

# Ops whose first output holds only values of their first input (MaxPool pads with -inf,
# which no output takes): it stays on that input's grid and within its bounds.
PICKS_VALUES = frozenset(
    (
        "MaxPool",
        "GlobalMaxPool",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Identity",
    )
)

# A grid: (step, lowest value, highest value), the bounds infinite where unknown.
Grid = tuple[float, float, float]


class Grids:
    """The grids of the values of one graph seen so far."""

    def __init__(
        self,
        graph: onnx.GraphProto,
        constants: Constants,
        consumers: dict[str, list[onnx.NodeProto]],
        graph_outputs: set[str],
    ) -> None:
        self.graph = graph
        self.constants = constants
        self.consumers = consumers
        self.graph_outputs = graph_outputs
        self._grids: dict[str, Grid] = {}

    def __setitem__(self, value: str, grid: Grid) -> None:
        self._grids[value] = grid

    def unchanged_by(self, fmt: Format, value: str) -> bool:
        """Whether quantizing `value` to `fmt` changes nothing: the format's step divides
        the value's grid's, and its range holds the grid's bounds."""
        grid = self._grids.get(value)
        if grid is None or not isinstance(fmt, DFP):
            return False
        step, low, high = grid
        return (step / fmt.step).is_integer() and fmt.min <= low and high <= fmt.max

    def note(self, node: onnx.NodeProto) -> None:
        """Note what a node that is not a layer leaves on a grid: a Relu or constant Clip of
        values on a grid, with bounds on it, an exact sum of two such values, or values that
        the node only picks or moves."""
        if node.op_type in ("Add", "Sum"):
            self._note_sum(node)
            return
        grid = self._grids.get(node.input[0] if node.input else "")
        if grid is None:
            return
        if node.op_type in PICKS_VALUES:
            self._grids[node.output[0]] = grid
            return
        bounds = clamp_bounds(self.graph, node, self.constants)
        if on_step(bounds, grid[0]):
            low, high = max(bounds[0], grid[1]), min(bounds[1], grid[2])
            self._grids[node.output[0]] = (grid[0], low, high)

    def clamps_nothing(self, node: onnx.NodeProto) -> bool:
        """Whether a Relu or constant Clip reads values on a grid that lie within its bounds
        already (a layer's quantized output, say). It is then an Identity, which onnxruntime
        removes."""
        grid = self._grids.get(node.input[0] if node.input else "")
        bounds = clamp_bounds(self.graph, node, self.constants) if grid else None
        return bounds is not None and bounds[0] <= grid[1] and grid[2] <= bounds[1]

    def sole_clamp(self, value: str, step: float):
        """The Relu or constant Clip that alone reads `value` (not a graph output) and its
        bounds, when they are infinite or multiples of `step`."""
        users = self.consumers.get(value, [])
        if value in self.graph_outputs or len(users) != 1:
            return None
        bounds = clamp_bounds(self.graph, users[0], self.constants)
        return (users[0], bounds) if on_step(bounds, step) else None

    def sums_exactly(self, value: str, step: float, low: float, high: float) -> bool:
        """Whether every Add or Sum that reads `value` (multiples of `step` in [low, high])
        adds values on a grid of `step` or coarser, whose sum float32 holds exactly near the
        blocked rounding constant. onnxruntime may fuse such an Add into the quantizer's
        last node, which then adds the other value before it subtracts the constant: the
        same result only when that sum does not round. It fuses only into a node whose
        output nothing else reads, so a value with other readers is safe."""
        users = self.consumers.get(value, [])
        if len(users) > 1:
            return True
        for user in users:
            if user.op_type not in ("Add", "Sum"):
                continue
            for other in user.input:
                grid = (step, low, high) if other == value else self._grids.get(other)
                if grid is None or not (grid[0] / step).is_integer():
                    return False
                reach = max(abs(low), abs(high)) + max(abs(grid[1]), abs(grid[2]))
                if reach >= math.ldexp(step, 22):
                    return False
        return True

    def _note_sum(self, node: onnx.NodeProto) -> None:
        """Two values on power-of-two grids sum onto the finer grid, exactly while the sum
        stays within 2**24 of its steps."""
        grids = [self._grids.get(name) for name in node.input]
        if len(grids) != 2 or None in grids:
            return
        step = min(grid[0] for grid in grids)
        low, high = sum(grid[1] for grid in grids), sum(grid[2] for grid in grids)
        if max(abs(low), abs(high)) <= math.ldexp(step, 24):
            self._grids[node.output[0]] = (step, low, high)


def on_step(bounds: tuple[float, float] | None, step: float) -> bool:
    """Whether clamp bounds are known and each infinite or a multiple of `step`."""
    return bounds is not None and all(math.isinf(b) or (b / step).is_integer() for b in bounds)
