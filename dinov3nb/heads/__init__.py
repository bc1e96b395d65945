"""The released pretrained heads (chapter 4, notebooks `4x_heads.*`): classifier, depth, detection, segmentation, dino.txt. Imports `models` only."""
