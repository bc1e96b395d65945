"""Backbones (chapter 0, notebooks `0x_models.*`): layers, ViT, ConvNeXt, the released presets, checkpoint formats, preprocessing. The bottom layer: imports no other chapter."""
