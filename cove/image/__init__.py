"""The image layer: content store, layer unpacking, archives. Imports spec and syscalls only."""
