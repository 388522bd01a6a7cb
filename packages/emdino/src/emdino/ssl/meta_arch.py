"""Student/teacher orchestration of one DINOv2 step (``dinov2/train/ssl_meta_arch.py``).

Per step:

1. Teacher (EMA of the student, no gradients, no stochastic depth) embeds the 2 global views;
   its head scores the class tokens and the patch tokens at the student's masked positions.
2. The scores are centred (Sinkhorn-Knopp or EMA mean) at the teacher temperature.
3. Student embeds the global views with iBOT masks (mask token at masked patches) and the local
   views; one head pass scores all class tokens and the masked patch tokens.
4. Loss = w_dino * DINO(class tokens, all cross-view pairs)
   + w_koleo * sum over global views of KoLeo(student class tokens)
   + w_ibot * iBOT(masked patch tokens).
5. ``backward``; the training loop then clips, steps the optimizer and calls `update_teacher`.

`StudentNet` puts the whole student computation in one ``forward`` so that DDP (or FSDP) can wrap
it; the teacher is a second `StudentNet` never wrapped.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from emdino.precision import autocast as precision_autocast
from emdino.ssl import distributed
from emdino.ssl.backbone import MaskedViT, build_backbone
from emdino.ssl.config import PretrainConfig
from emdino.ssl.heads import DINOHead
from emdino.ssl.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss, MeanCenter, sinkhorn_knopp
from emdino.ssl.monitor import normalized_entropy


class StudentNet(nn.Module):
    """Backbone + DINO head (+ separate iBOT head); the teacher has the same structure.

    Args:
        backbone: the masked ViT.
        dino_head: head of the class tokens (and of the patches unless ``ibot_head``).
        ibot_head: separate head of the masked patch tokens, or None to share ``dino_head``.
    """

    def __init__(
        self, backbone: MaskedViT, dino_head: DINOHead, ibot_head: DINOHead | None = None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.ibot_head = ibot_head

    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None,
        masks: torch.Tensor | None,
        mask_indices: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Student outputs.

        Returns:
            ``global_cls`` (2B, D) backbone class tokens, ``global_logits`` (2B, K),
            ``local_logits`` (nL*B, K) or empty, ``patch_logits`` (M, K') at ``mask_indices``.
        """
        g = self.backbone(global_crops, masks)
        cls = [g["cls"]]
        if local_crops is not None:
            cls.append(self.backbone(local_crops)["cls"])
        patches = g["patch"].flatten(0, 1).index_select(0, mask_indices)
        n_global = g["cls"].shape[0]
        n_cls = sum(c.shape[0] for c in cls)
        if self.ibot_head is None:
            # One head pass over class and patch tokens (DINOv2 concatenates them likewise).
            out = self.dino_head(torch.cat([*cls, patches]))
            cls_out, patch_out = out[:n_cls], out[n_cls:]
        else:
            cls_out = self.dino_head(torch.cat(cls))
            patch_out = self.ibot_head(patches)
        return {
            "global_cls": g["cls"],
            "global_logits": cls_out[:n_global],
            "local_logits": cls_out[n_global:],
            "patch_logits": patch_out,
        }

    @torch.no_grad()
    def teacher_forward(
        self, global_crops: torch.Tensor, mask_indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher scores: ``(2B, K)`` of the class tokens and ``(M, K')`` at ``mask_indices``."""
        g = self.backbone(global_crops)
        patches = g["patch"].flatten(0, 1).index_select(0, mask_indices)
        if self.ibot_head is None:
            out = self.dino_head(torch.cat([g["cls"], patches]))
            n = g["cls"].shape[0]
            return out[:n], out[n:]
        return self.dino_head(g["cls"]), self.ibot_head(patches)


def build_student(cfg: PretrainConfig, teacher: bool = False) -> StudentNet:
    """A student (or, with ``teacher=True``, a teacher without stochastic depth) network."""
    backbone = build_backbone(
        cfg.model, cfg.crops.global_size, drop_path_rate=0.0 if teacher else None
    )
    h = cfg.head
    dino_head = DINOHead(
        cfg.model.embed_dim, h.n_prototypes, h.nlayers, h.hidden_dim, h.bottleneck_dim
    )
    ibot_head = (
        DINOHead(
            cfg.model.embed_dim, h.ibot_n_prototypes, h.nlayers, h.hidden_dim, h.bottleneck_dim
        )
        if h.ibot_separate_head
        else None
    )
    return StudentNet(backbone, dino_head, ibot_head)


class SSLMetaArch(nn.Module):
    """DINOv2 student/teacher pair with losses, centering and the EMA update.

    Args:
        cfg: the resolved configuration.
        device: where the networks live.

    Examples:
        >>> from emdino.ssl.config import load_config
        >>> cfg = load_config("tiny_test")  # doctest: +SKIP
        >>> meta = SSLMetaArch(cfg, torch.device("cpu"))  # doctest: +SKIP
        >>> losses = meta.forward_backward(batch, teacher_temp=0.04)  # doctest: +SKIP
        >>> meta.update_teacher(0.996)  # doctest: +SKIP
    """

    def __init__(self, cfg: PretrainConfig, device: torch.device | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.device = device or torch.device("cpu")
        self.student = build_student(cfg).to(self.device)
        self.teacher = build_student(cfg, teacher=True).to(self.device)
        # The teacher starts as an exact copy of the student.
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.dino_loss = DINOLoss(cfg.loss.student_temp)
        self.ibot_loss = IBOTPatchLoss(cfg.loss.student_temp)
        self.koleo_loss = KoLeoLoss(distributed=cfg.loss.koleo_distributed)
        k_patch = (
            cfg.head.ibot_n_prototypes if cfg.head.ibot_separate_head else cfg.head.n_prototypes
        )
        # Buffers even with Sinkhorn-Knopp, so checkpoints have one layout.
        self.cls_center = MeanCenter(cfg.head.n_prototypes, cfg.loss.center_momentum)
        self.patch_center = MeanCenter(k_patch, cfg.loss.center_momentum)
        self.cls_center.to(self.device)
        self.patch_center.to(self.device)
        #: What forward_backward calls: the student, or its DDP/FSDP wrapper (see `wrap_student`).
        self.student_runner: nn.Module = self.student

    # ------------------------------------------------------------------------------------------
    def wrap_student(self, wrapper: nn.Module) -> None:
        """Run the student through a DDP/FSDP wrapper of ``self.student``."""
        self.student_runner = wrapper

    def autocast(self) -> Any:
        """The autocast context of the configured precision (none for fp32)."""
        return precision_autocast(self.cfg.train.precision, self.device)

    def _center(
        self, logits: torch.Tensor, temp: float, center: MeanCenter, n_total: int | None = None
    ) -> torch.Tensor:
        if self.cfg.loss.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, temp, self.cfg.loss.sinkhorn_iterations)
        probs = center.softmax(logits, temp)
        center.update(logits)
        return probs

    def forward_backward(
        self, batch: dict[str, Any], teacher_temp: float
    ) -> dict[str, torch.Tensor]:
        """Losses of one step on this rank's batch; calls ``backward`` on their weighted sum.

        Args:
            batch: a collated batch (see `emdino.ssl.data.collate`).
            teacher_temp: the step's teacher temperature.

        Returns:
            Detached float32 scalars: ``loss``, ``dino``, ``koleo``, ``ibot``, and the normalised
            entropies of the teacher targets ``dino_target_entropy``, ``ibot_target_entropy``
            (NaN without iBOT targets on this rank).
        """
        cfg = self.cfg
        dev = self.device
        global_crops = batch["global_crops"].to(dev, non_blocking=True)
        local = batch["local_crops"]
        local_crops = local.to(dev, non_blocking=True) if local is not None else None
        masks = batch["masks"].to(dev, non_blocking=True)
        n_global, n_local = batch["n_global"], batch["n_local"]
        mask_indices = masks.flatten().nonzero().flatten()
        # The iBOT decision must be the same on every rank (collectives inside the centering).
        n_masked_total = int(
            distributed.all_reduce_(torch.tensor([float(mask_indices.numel())])).item()
        )
        do_ibot = cfg.loss.ibot_weight > 0 and n_masked_total > 0

        with torch.no_grad(), torch.profiler.record_function("teacher"):
            with self.autocast():
                t_cls, t_patch = self.teacher.teacher_forward(global_crops, mask_indices)
            t_cls_all = self._center(t_cls, teacher_temp, self.cls_center)
            t_cls_probs = t_cls_all.chunk(n_global)
            t_patch_probs = (
                self._center(t_patch, teacher_temp, self.patch_center) if do_ibot else None
            )
            # Collapse monitor (emdino.ssl.monitor): 1 = uniform targets, 0 = one-hot.
            dino_entropy = normalized_entropy(t_cls_all)
            ibot_entropy = (
                normalized_entropy(t_patch_probs)
                if t_patch_probs is not None and t_patch_probs.shape[0]
                else torch.tensor(float("nan"))
            )

        with torch.profiler.record_function("student_forward"):
            with self.autocast():
                s = self.student_runner(global_crops, local_crops, masks, mask_indices)
            student_views = list(s["global_logits"].chunk(n_global))
            if n_local:
                student_views += list(s["local_logits"].chunk(n_local))
            dino = self.dino_loss(student_views, list(t_cls_probs))
            koleo = sum(self.koleo_loss(c) for c in s["global_cls"].chunk(n_global))
            if do_ibot:
                assert t_patch_probs is not None
                ibot = self.ibot_loss(s["patch_logits"], t_patch_probs, masks)
            else:  # keep the patch outputs in the graph so DDP sees every parameter used
                ibot = s["patch_logits"].float().sum() * 0.0
            total = cfg.loss.dino_weight * dino + cfg.loss.ibot_weight * ibot
            if cfg.loss.koleo_weight > 0:
                total = total + cfg.loss.koleo_weight * koleo

        with torch.profiler.record_function("backward"):
            total.backward()
        return {
            "loss": total.detach().float(),
            "dino": dino.detach().float(),
            "koleo": (koleo / n_global).detach().float(),
            "ibot": ibot.detach().float(),
            "dino_target_entropy": dino_entropy.float(),
            "ibot_target_entropy": ibot_entropy.float(),
        }

    # ------------------------------------------------------------------------------------------
    def param_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Matching (student, teacher) parameter lists."""
        s = dict(self.student.named_parameters())
        t = dict(self.teacher.named_parameters())
        if s.keys() != t.keys():
            raise RuntimeError("student and teacher parameters differ")
        names = list(s)
        return [s[n] for n in names], [t[n] for n in names]

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA: ``teacher <- m * teacher + (1 - m) * student`` for every parameter."""
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        for net in (self.student, self.teacher):
            # FSDP keeps a root's parameters unsharded after a forward without backward (the
            # teacher); reshard so both lists hold matching local shards.
            reshard = getattr(net, "reshard", None)
            if reshard is not None:
                reshard()
        s, t = self.param_pairs()
        torch._foreach_mul_(t, momentum)
        torch._foreach_add_(t, s, alpha=1 - momentum)

    def clip_gradients(self, max_norm: float | None) -> dict[str, float]:
        """Clip each module's gradient norm separately (DINOv2); returns the norms before."""
        norms = {}
        mods = {"backbone": self.student.backbone, "dino_head": self.student.dino_head}
        if self.student.ibot_head is not None:
            mods["ibot_head"] = self.student.ibot_head
        for name, mod in mods.items():
            params = [p for p in mod.parameters() if p.grad is not None]
            if not params:
                continue
            if max_norm is None:
                norm = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(p.grad) for p in params])
                )
            else:
                norm = nn.utils.clip_grad_norm_(params, max_norm)
            norms[f"grad_norm_{name}"] = float(norm)
        return norms


def copy_student_to_teacher(meta: SSLMetaArch) -> None:
    """Reset the teacher to the student's weights (used at initialisation and in tests)."""
    meta.teacher.load_state_dict(copy.deepcopy(meta.student.state_dict()))
