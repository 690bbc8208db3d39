"""What the configs' workflows need beyond MONAI: ignite handlers, command-line values and one-
line errors, and reading the configs from Python.
"""
