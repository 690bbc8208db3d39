"""Diffusion implicit segmentation ensembles for brain-tumour MRI (Wolleb et al., MIDL 2022).

Sub-packages, in the order a case meets them (docs/architecture.md walks through them):
``data`` (files to tensors), ``diffusion`` (the method: noise maths, samplers, training step),
``ensemble`` (N samples per slice to mean and variance), ``io`` (tensors to files, checkpoints),
``evaluation`` (scores and figures) and ``workflow`` (what the configs' workflows need).
"""
