"""The foundation under every other package (issue 16): host mechanisms that know no
images or containers. Kept empty so importing one module loads only that module."""
