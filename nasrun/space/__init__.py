"""Search spaces: the op registry, the genotype, and one module per space."""
