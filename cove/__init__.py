"""cove: run OCI images as containers or as virtual machines from one CLI."""

__version__ = "0.1.0"
