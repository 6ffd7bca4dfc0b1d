"""health stage."""
