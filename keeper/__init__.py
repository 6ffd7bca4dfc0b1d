"""Liquidation keeper for Aave V3 markets."""

__version__ = "0.1.0"
