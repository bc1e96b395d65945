"""DINOv3 vision backbones, rebuilt as a literate, tested, notebook-first library."""
__version__ = "0.1.0"

from .models.vit import DinoVisionTransformer, ViTConfig
from .models.convnext import ConvNeXt, ConvNeXtConfig
from .models.presets import PRESETS, list_backbones
from .models.backbones import (build, dinov3_vits16, dinov3_vits16plus, dinov3_vitb16, dinov3_vitl16, dinov3_vitl16plus,
                               dinov3_vith16plus, dinov3_vit7b16, dinov3_convnext_tiny, dinov3_convnext_small,
                               dinov3_convnext_base, dinov3_convnext_large)
from .models.transforms import load_image, make_transform, preprocess
from .models.checkpoints import load, load_weights_into, save, save_hf, to_timm_state_dict
from .deploy.export import export_onnx, OnnxRuntimeBackbone
from .deploy.fast import accelerate, cpu_isa, OpenVinoBackbone
from .deploy.fast_backbone import FastBackbone
from .deploy.runtime import make_runtime, TorchRuntime
from .heads.classifier import dinov3_vit7b16_lc
from .heads.depth import dinov3_vit7b16_dd, dinov3_vitl16_chmv2
from .heads.dinotxt import dinov3_vitl16_dinotxt_tet1280d20h24l
from .heads.detector import dinov3_vit7b16_de
from .heads.segmentor import dinov3_vit7b16_ms
