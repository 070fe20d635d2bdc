"""Queries of stored results, tables and PNG plots."""
