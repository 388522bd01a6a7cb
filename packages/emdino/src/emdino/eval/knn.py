"""Weighted k-NN classification on frozen features (DINO's ``eval_knn``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_classify(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    n_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Predict classes by a vote of the k nearest (cosine) training features.

    Each neighbour votes with weight ``exp(cos / temperature)`` (Wu et al. 2018, as in DINO).

    Args:
        train_feats: ``(N, D)``.
        train_labels: ``(N,)`` ints in ``[0, n_classes)``.
        test_feats: ``(M, D)``.
        n_classes: number of classes.
        k: neighbours (capped at N).
        temperature: vote temperature.
        chunk: test rows per similarity block (bounds memory).

    Returns:
        ``(M,)`` predicted classes.

    Examples:
        >>> tr = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> knn_classify(tr, torch.tensor([0, 0, 1]), torch.tensor([[0.1, 1.0]]), 2, k=1).tolist()
        [1]
    """
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError("features must be (N, D) and (M, D) with the same D")
    if train_labels.shape != (train_feats.shape[0],):
        raise ValueError("one label per training feature")
    if k < 1 or temperature <= 0:
        raise ValueError("k must be >= 1 and temperature > 0")
    k = min(k, train_feats.shape[0])
    tr = F.normalize(train_feats.float(), dim=1)
    out = []
    for b in range(0, test_feats.shape[0], chunk):
        te = F.normalize(test_feats[b : b + chunk].float(), dim=1)
        sim, idx = (te @ tr.t()).topk(k, dim=1)
        votes = torch.zeros(te.shape[0], n_classes)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        out.append(votes.argmax(1))
    return torch.cat(out)
