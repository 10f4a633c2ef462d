"""Prefect flows that orchestrate build, train and evaluate."""
