"""Graphs of layers: ``Network``, its nodes (``Layer``, ``Placeholder``, ``Stack``, ``Sum``, ``List``)
and ``Sequential``.

A ``Placeholder`` stands for the previous timestep's output of the layer assigned to it. Cycles
through placeholders are found when the network is built (strongly connected components of the
graph in which a placeholder depends on its layer) and run timestep by timestep; everything else
runs over the whole sequence at once.

- ``nodes``: what a graph is built from (the nodes, ``Sequential``);
- ``network``: ``Network``, the graph of named layers as a factory;
- ``compiler``: a network checked, named, shaped and planned for an input shape (``compile_network``);
- ``network_runner``: ``NetworkRunner``, which runs the compiled network.
"""

__all__: list[str] = []  # a private package: import from its modules; ``rnnbuilder`` exports the public names
