"""The HTTPS JSON API (v1)."""
