"""The errors rnnbuilder raises for misuse. Each message says what to fix."""

from __future__ import annotations

__all__ = ["RnnbuilderError", "GraphError", "ShapeError", "SpecError"]


class RnnbuilderError(ValueError):
    """Base class: the network, its input or its description is wrong, not the library."""


class GraphError(RnnbuilderError):
    """A ``Network`` is malformed: no output layer, an unassigned placeholder, a foreign node."""


class ShapeError(RnnbuilderError):
    """Shapes don't fit: an input of the wrong shape, a sum of different shapes."""


class SpecError(RnnbuilderError):
    """A network description is wrong. ``path`` names the place, such as ``root.layers[2].args.tau``."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.reason = message
