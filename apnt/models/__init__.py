"""Models: AHDRNet, APNT-Fusion and their building blocks."""
