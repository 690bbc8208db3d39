"""Scores of written outputs against labels (segmentation and uncertainty metrics), the
validation metric and the figures of the results.
"""
