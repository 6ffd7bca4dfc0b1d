"""strategy stage."""
