"""The diffusion method: the process's maths written once (process), the reverse-diffusion
samplers, the training step and loss, and the weight average.
"""
