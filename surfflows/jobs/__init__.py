"""jobflow Makers and flows of surfflows."""
