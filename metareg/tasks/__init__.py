"""metareg."""
