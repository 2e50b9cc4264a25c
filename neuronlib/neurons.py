"""The neuron vocabulary: ``Neuron(layer, unit, sign)`` and the paper's ``L23/N807-`` notation.

A neuron is one unit of the MLP-activation basis (``mlp_acts``: the input of ``down_proj``) at one layer; its sign
says which side is meant when a description or a circuit distinguishes them (``-`` = the negative side), and is
empty when both are. The CLI, :mod:`neuronlib.describe`, the viewer and the paper's studies all format and parse
neurons through this type.
"""
from __future__ import annotations

import re
from typing import NamedTuple

SIGNS = ("", "+", "-")
_PATTERN = re.compile(r"^\s*L(\d+)\s*/\s*N(\d+)\s*([+-]?)\s*$")


class Neuron(NamedTuple):
    layer: int
    unit: int
    sign: str = ""

    def __str__(self) -> str:
        return f"L{self.layer}/N{self.unit}{self.sign}"

    @property
    def label(self) -> str:
        """``L23/N807-``."""
        return str(self)

    @classmethod
    def parse(cls, text: str) -> "Neuron":
        """``Neuron.parse("L23/N807-") == Neuron(23, 807, "-")``; raises ValueError on anything else."""
        match = _PATTERN.match(str(text))
        if not match:
            raise ValueError(f"neuron {text!r} should look like L23/N807 (optionally with a sign: L23/N807-)")
        return cls(int(match.group(1)), int(match.group(2)), match.group(3))

    @classmethod
    def coerce(cls, obj) -> "Neuron":
        """A Neuron from a Neuron, an ``"L23/N807-"`` string, a (layer, unit[, sign]) tuple or an ``mlp_acts`` Node."""
        if isinstance(obj, Neuron):
            return obj
        if isinstance(obj, str):
            return cls.parse(obj)
        if hasattr(obj, "site") and hasattr(obj, "unit"):
            if obj.site != "mlp_acts":
                raise ValueError(f"only mlp_acts nodes are neurons, got {obj}")
            return cls(int(obj.layer), int(obj.unit))
        if isinstance(obj, (tuple, list)) and len(obj) in (2, 3):
            sign = obj[2] if len(obj) == 3 else ""
            if not isinstance(sign, str) or sign not in SIGNS:
                raise ValueError(f"a neuron's sign is '', '+' or '-', got {sign!r}")
            return cls(int(obj[0]), int(obj[1]), sign)
        raise ValueError(f"a neuron is (layer, unit), (layer, unit, sign), 'L23/N807-' or an mlp_acts Node, got {obj!r}")

    def check(self, model) -> "Neuron":
        """Raise ValueError unless the model has this neuron."""
        if not 0 <= self.layer < model.n_layers:
            raise ValueError(f"{self}: layer {self.layer} out of range (model has {model.n_layers} layers)")
        if not 0 <= self.unit < model.d_mlp:
            raise ValueError(f"{self}: unit {self.unit} out of range (d_mlp = {model.d_mlp})")
        return self


def neuron_label(layer: int, unit: int, sign: str = "") -> str:
    """``L23/N8079-``: the paper's name for (the negative side of) neuron 8079 of layer 23."""
    return str(Neuron(int(layer), int(unit), sign or ""))
