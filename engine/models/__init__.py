"""Model definitions: the Dual-AR transformer and the causal codec."""
