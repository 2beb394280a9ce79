"""Talking to the tenant's backend: the pooled HTTP client and its metrics."""
