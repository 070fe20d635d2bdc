"""Campaigns composed of surfflows jobs, run locally or submitted to jobflow-remote."""
