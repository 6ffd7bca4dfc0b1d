"""protocol stage."""
