"""Image building: Dockerfile parsing, the build context and the builder."""
