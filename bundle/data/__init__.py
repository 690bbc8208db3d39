"""Data: dataset layouts on disk, validation, datalists and splits, the transforms from files to
the network's tensors, tumour regions, normalisation and the synthetic BraTS-like generator.
"""
