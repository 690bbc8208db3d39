"""Files: atomic writing, the inference outputs (NIfTI and 3D Slicer), the per-case report and
checkpoints with the settings that give weights their meaning.
"""
