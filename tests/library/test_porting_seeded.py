"""Seeded construction gives rnnbuilder 0.1.1's initial parameters, in its order (against the original,
run in a subprocess by ``tests/original.py``): index-based weight copies between the two line up.

This holds for networks of layers the original builds once (Linear, neurons, and Sequential and
Network of them). For a convolution, TempConvPlus2d, LSTM or custom module, the original builds
extra throw-away modules while it infers shapes, drawing random numbers that no layer keeps; its
weights are carried over with ``rnnbuilder.porting.convert_state_dict`` instead.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from tests.original import run_original
from tests.original_networks import DESCRIPTIONS, ours

IN_SHAPES = {"recurrent_snn": (20,), "lstm_from_primitives": (10,)}


@pytest.fixture(scope="module")
def original_parameters() -> dict:
    """Each network's parameters as the original builds them after torch.manual_seed(0), in its order."""
    code = DESCRIPTIONS + textwrap.dedent(
        """
        for name, in_shape in inputs["in_shapes"].items():
            torch.manual_seed(0)
            outputs[name] = [p.detach().clone() for p in globals()[name]().make_model(in_shape).parameters()]
        """
    )
    return run_original(code, {"in_shapes": IN_SHAPES})


@pytest.mark.parametrize("name", IN_SHAPES)
def test_seeded_model_draws_the_originals_parameters_in_its_order(original_parameters, name):
    """After torch.manual_seed(0), parameter i here holds the original's parameter i (neuron membranes flattened)."""
    factory = ours(name)
    torch.manual_seed(0)
    theirs, mine = original_parameters[name], list(factory.make_model(IN_SHAPES[name]).parameters())
    assert len(mine) == len(theirs)
    for i, (p, q) in enumerate(zip(mine, theirs)):
        assert torch.equal(p, q.reshape(p.shape)), f"parameter {i}"
