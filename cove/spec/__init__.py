"""Pure spec types: data and parsing only, no I/O."""
