"""Ensembles of N masks per slice turned into a mean and a variance: the diffusion implicit
ensemble, the U-Net / MC-dropout baselines and the split of their output.
"""
