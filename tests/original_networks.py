"""Network descriptions written for rnnbuilder 0.1.1, as one source text that both the original (in a
subprocess, see ``tests/original.py``) and this package run, so that both build the same networks.

``ours(name)`` is this package's factory for the description ``name``.
"""

from __future__ import annotations

import textwrap

__all__ = ["DESCRIPTIONS", "ours"]

DESCRIPTIONS = textwrap.dedent(
    '''
    import operator
    from functools import reduce

    import rnnbuilder as rb
    from rnnbuilder import nn, rnn, snn

    FRAME_STACK = 3


    def spiking_conv(first_conv):
        """examples/spiking_convolutional_network.py, narrower, for (1, 44, 36) frames."""
        conv_neuron = snn.Discontinuous()
        conv_stack = rb.Sequential(
            first_conv, conv_neuron,
            nn.Conv2d(out_channels=16, kernel_size=4, stride=2), conv_neuron,
            nn.Conv2d(out_channels=16, kernel_size=3, stride=1), conv_neuron)
        ll = rb.Network()
        ll.output = rb.Placeholder()
        ll.output = ll.input.stack(ll.output).apply(nn.Linear(48), snn.LIF())
        return rb.Sequential(conv_stack, ll, nn.Linear(3))


    def temp_conv_example():
        """The example as it is: a rnn.TempConvPlus2d over FRAME_STACK frames first."""
        return spiking_conv(rnn.TempConvPlus2d(out_channels=8, kernel_size=8, stride=4, time_kernel_size=FRAME_STACK))


    def conv2d_example():
        """The example with a plain nn.Conv2d first (the original's TempConvPlus2d isn't causal)."""
        return spiking_conv(nn.Conv2d(out_channels=8, kernel_size=8, stride=4))


    def lstm_stack():
        """rnn.LSTM factories of two layers, between linear layers."""
        return rb.Sequential(nn.Linear(12), rnn.LSTM(10, num_layers=2), nn.ReLU(), nn.Linear(4))


    def two_cycles():
        """Two placeholder cycles (Cooldown, Adaptive) and layers outside them: a named Stack, an LSTM."""
        n = rb.Network()
        n.a = rb.Placeholder()
        n.pre = n.input.apply(nn.Linear(5))
        n.b = rb.Placeholder()
        n.b = n.pre.stack(n.b).apply(nn.Linear(4), snn.Cooldown())
        n.bridge = n.b.apply(nn.Linear(4))  # the original can't feed a cycle from another one directly
        n.a = n.bridge.stack(n.a).apply(nn.Linear(6), snn.Adaptive())
        n.s = n.a.stack(n.pre)
        n.output = n.s.apply(nn.Linear(8), rnn.LSTM(7), nn.Linear(2))
        return n


    def cycles_declared_backwards():
        """Two cycles whose placeholders are declared in the other order than their layers are defined."""
        n = rb.Network()
        n.late = rb.Placeholder()
        n.early = rb.Placeholder()
        n.early = n.input.stack(n.early).apply(nn.Linear(6), snn.LIF())
        n.bridge = n.early.apply(nn.Linear(6))
        n.late = n.bridge.stack(n.late).apply(nn.Linear(5), snn.NoReset())
        n.output = n.late.apply(nn.Linear(3))
        return n


    def recurrent_block():
        """A network with its own placeholder cycle, and a Sequential of one factory."""
        m = rb.Network()
        m.h = rb.Placeholder()
        m.h = m.input.stack(m.h).apply(nn.Linear(5), snn.LIF())
        m.output = m.h.apply(rb.Sequential(nn.Linear(4)))
        return m


    def nested_networks():
        """A network as a layer outside a cycle (its own cycle level) and inside one (none)."""
        n = rb.Network()
        n.front = n.input.apply(recurrent_block())
        n.loop = rb.Placeholder()
        n.loop = n.front.stack(n.loop).apply(nn.Linear(6), recurrent_block())
        n.output = n.loop.apply(nn.Linear(2))
        return n


    def recurrent_snn():
        # The spiking-convolution example's recurrent part on flat input: Linear and neuron layers only.
        ll = rb.Network()
        ll.output = rb.Placeholder()
        ll.output = ll.input.stack(ll.output).apply(nn.Linear(48), snn.LIF())
        return rb.Sequential(nn.Linear(32), snn.NoReset(), ll, nn.Linear(3), snn.Adaptive())


    def prod(iterable):
        return reduce(operator.mul, iterable, 1)


    class HadamardModule(rb.custom.CustomModule):
        def get_out_shape(self, in_shapes):
            return in_shapes[0]

        def forward(self, inputs, _):
            return prod(inputs), ()


    Hadamard = rb.custom.register_recurrent(
        module_class=HadamardModule, flatten_input=False, single_step=False, unroll_full_state=False
    )


    def lstm_from_primitives():
        """examples/lstm.py: an LSTM cell from Linear layers and a custom Hadamard module."""
        hidden_size = 16
        n = rb.Network()
        n.output = rb.Placeholder()
        n.h_and_i = n.input.stack(n.output)
        n.i = n.h_and_i.apply(nn.Linear(hidden_size), nn.Sigmoid())
        n.f = n.h_and_i.apply(nn.Linear(hidden_size), nn.Sigmoid())
        n.o = n.h_and_i.apply(nn.Linear(hidden_size), nn.Sigmoid())
        n.g = n.h_and_i.apply(nn.Linear(hidden_size), nn.Tanh())
        n.c = rb.Placeholder()
        n.c_1 = n.f.append(n.c).apply(Hadamard())
        n.c_2 = n.i.append(n.g).apply(Hadamard())
        n.c = n.c_1.sum(n.c_2)
        n.tan_c = n.c.apply(nn.Tanh())
        n.output = n.o.append(n.tan_c).apply(Hadamard())
        return n
    '''
)


def ours(name: str):
    """Our factory of the description ``name``."""
    namespace: dict = {}
    exec(DESCRIPTIONS, namespace)
    return namespace[name]()
