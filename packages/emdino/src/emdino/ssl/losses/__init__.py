"""DINOv2 losses: DINO class-token loss, iBOT masked-patch loss, KoLeo, teacher centering."""

from emdino.ssl.losses.centering import MeanCenter, sinkhorn_knopp
from emdino.ssl.losses.dino import DINOLoss
from emdino.ssl.losses.ibot import IBOTPatchLoss
from emdino.ssl.losses.koleo import KoLeoLoss

__all__ = ["DINOLoss", "IBOTPatchLoss", "KoLeoLoss", "MeanCenter", "sinkhorn_knopp"]
