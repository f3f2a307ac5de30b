"""Version 1 of the contract: package ``rnnbuilder_sim.v1`` in ``proto/rnnbuilder_sim/v1/``."""
