"""The converters both sides of the wire share, next to the generated code they convert to.

- ``tensors``: numpy arrays and torch tensors <-> ``Tensor`` messages (raw or bit-packed).
- ``networks``: rnnbuilder networks (their ``rnnbuilder.spec`` description) <-> ``NetworkSpec``.
- ``descriptions``: the types a server allows (``rnnbuilder.describe``) <-> ``FactoryDescription``.
- ``names``: the metadata headers and resource names (``sessions/<id>``).

``client/`` and ``server/`` both import these; neither converts on its own.
"""

from . import descriptions, names, networks, tensors

__all__ = ["descriptions", "names", "networks", "tensors"]
