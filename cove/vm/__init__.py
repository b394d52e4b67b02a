"""Virtual machines: QEMU processes managed like containers (``cove vm``)."""
