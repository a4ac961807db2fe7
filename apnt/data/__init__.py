"""Image I/O, the Kalantari'17 dataset layout and synthetic scenes in that layout (DESIGN §5)."""
from apnt.data.io import ImageReadError, exposure_time, is_linear, parse_exposure, read_image, write_image
from apnt.data.kalantari import KalantariDataset, Scene, list_scenes, load_scene, read_exposures
from apnt.data.synth import synth_scene, synthesize, write_scene

__all__ = [
    "ImageReadError", "exposure_time", "is_linear", "parse_exposure", "read_image", "write_image",
    "KalantariDataset", "Scene", "list_scenes", "load_scene", "read_exposures",
    "synth_scene", "synthesize", "write_scene",
]
