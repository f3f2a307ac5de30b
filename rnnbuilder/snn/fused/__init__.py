"""Fused multi-step neurons: a whole (time, batch, n) sequence in one call, forward and backward.

``rnnbuilder.snn.functional.lif_sequence`` and friends call into this package. Each neuron family has
a ``torch.autograd.Function`` whose forward runs the time loop without an autograd graph and whose
backward is a hand-written reverse-time loop (BPTT) with the surrogate's ``gradient``.

Backends (``use_backend``, ``set_backend``, or the environment):

- ``"auto"`` (default): ``"triton"`` for float32 CUDA tensors when Triton is importable and the
  surrogate is a built-in one, else ``"torch"``.
- ``"torch"``: the loop in PyTorch ops, on any device and float dtype. Spikes and states are
  bit-identical to the reference loop because every step applies the same PyTorch operations in
  the same order. The backward evaluates the surrogate for a chunk of timesteps at once and leaves
  one fused multiply-add per timestep in its sequential part.
- ``"triton"``: one Triton kernel launch forward and one backward over all timesteps
  (``triton_impl``); each program owns a block of neurons and loops over time.
  On CPU tensors the kernels run in Triton's interpreter (slow; for tests and debugging).
- ``"reference"``: ``functional.unroll`` over the step function, through autograd (debugging). A
  spike function that isn't a ``Surrogate`` (any callable) always runs here, whatever the choice.

``RNNBUILDER_REFERENCE=1`` forces ``"reference"``; ``RNNBUILDER_NEURON_BACKEND=<name>`` picks one.
``use_backend`` (a context manager, per thread or task) wins over ``set_backend`` (process-wide),
which wins over the environment.

What the backward pass keeps, per element of the (time, batch, n) input, in the input's dtype
(float32: 4 bytes a value); nothing when no gradient is needed:

==========  ==========================================  ==================
neuron      saved for the backward pass                 bytes (float32)
==========  ==========================================  ==================
LIF         pre-spike membrane u = beta * v + x         4
NoReset     membrane u                                  4
Adaptive    membrane and adaptation before the step     8
Cooldown    membrane before the step, (1 - beta) e^x    8
==========  ==========================================  ==================

The backward recomputes spikes and surrogate gradients from these; it never saves the spikes. (The
torch backend allocates its spike output and saved values in one block of memory, as separate
tensors rather than views of the block, so the spikes' memory is released together with the saved
values; see ``blocks``.) Keeping the pre-spike membrane is the minimum for an exact backward:
recovering it backwards in time (v = (u - x) / beta) amplifies rounding errors by 1 / beta a step,
and recomputing it costs a second forward pass.

The torch backend's LIF backward writes the input gradient over the saved membrane, timestep by
timestep right after reading it, when autograd frees the saved values after the call (no
``retain_graph``): on the CPU a fresh gradient buffer costs a write of the whole sequence to memory
that isn't in cache, the largest single cost of the backward. The gradient then shares the block
with the spikes until both are freed. The spikes keep their values and stay ordinary tensors: the
write bumps the version counter of the saved membrane only, which the spikes don't share. On the
CPU a freed block is kept for the next call of the same size (``blocks.SPARE_BLOCKS``), which then writes
into memory that is already mapped; a block is reused only once nothing refers to it.

Modules: ``backends`` (the choice of backend), ``autograd`` (``lif``, ``adaptive``, ``cooldown`` and
their autograd functions), and the implementations they call, each with the same
``*_forward``/``*_backward`` functions: ``torch_impl`` (with ``blocks``, its forward memory) and
``triton_impl`` (launching the kernels of ``_triton_src``). ``euler`` holds the forward-Euler neurons
of NIR (``rnnbuilder.snn.nir_functional``): their operations, and one fused loop for all of them
(the torch path on every backend but ``"reference"``; it keeps the pre-reset membrane, 4 bytes an
element in float32, for spiking neurons only).
"""

from .autograd import adaptive, cooldown, lif
from .backends import BACKENDS, get_backend, resolve_backend, set_backend, triton_available, use_backend

__all__ = [
    "BACKENDS",
    "get_backend",
    "set_backend",
    "use_backend",
    "resolve_backend",
    "triton_available",
    "lif",
    "adaptive",
    "cooldown",
]
