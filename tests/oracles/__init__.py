"""Independent reference implementations the tests compare the package against (not shipped)."""
