"""The converters both sides of the wire share, next to the generated code they convert to.

- ``tensors``: numpy arrays and torch tensors <-> ``Tensor`` messages (raw or bit-packed).
- ``networks``: rnnbuilder networks (their ``rnnbuilder.spec`` description) <-> ``NetworkSpec``.
- ``names``: the metadata headers and resource names (``sessions/<id>``).

``client/`` and ``server/`` both import these; neither converts on its own.
"""

from . import names, networks, tensors

__all__ = ["names", "networks", "tensors"]
