"""Test support (chapter 99, notebooks `99_testing.*`): parity with the official reference outputs. The library never imports it.

`dinov3nb.testing` re-exports the helpers of its modules: `testing.parity` (backbones, multi-crop, losses, the SSL
step) and `testing.heads` (every released head, through one manifest-driven helper). `testing.standin` (a tiny
ViT trained on ShapesWorld labels, standing in for a pretrained backbone in the dino.txt tests) is imported by name."""
from .parity import *
from .heads import *
