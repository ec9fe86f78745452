"""See the package docstring of rebootcoord."""
