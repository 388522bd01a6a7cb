"""The ``emdino`` command line: models, features, pictures and embeddings of EM images.

Subcommands: ``list``, ``info NAME``, ``download NAME``, ``features INPUT --out F.zarr``,
``pca INPUT --out P.png``, ``embed INPUT... --out E.parquet``, ``umap E.parquet --out U.png``,
and ``pretrain`` (`emdino.ssl.train`).
INPUT is anything `em5m.open_volume` reads (a 2D image, a volume, a folder of slices). User
errors (unreadable input, unknown model, missing weights, bad option) print one line naming the
file or model and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from emdino import __version__
from emdino.errors import EMDinoError

EXIT_USAGE = 2


class _Bars:
    """tqdm bars for ``progress(stage, done, total, info)`` callbacks."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int, info: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = tqdm(total=total, desc=stage, leave=False, file=sys.stderr)
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()


def _load(args: argparse.Namespace) -> Any:
    from emdino.loader import load

    return load(args.model, device=args.device, dtype=args.dtype, progress=not args.quiet)


def _levels(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--levels must be comma-separated block indices, got {text!r}") from None


def cmd_list(args: argparse.Namespace) -> int:
    from emdino.loader import info
    from emdino.models.registry import default_model, list_models

    names = list_models(args.pattern, include_random=args.all or bool(args.pattern))
    rows = []
    for name in names:
        d = info(name)
        if d["random_init"]:
            weights = "random (no file)"
        elif d["cached"]:
            weights = "cached"
        else:
            weights = "download" if d["url"] else "manual (see info)"
        rows.append((name, str(d["embed_dim"]), str(d["patch_size"]), weights, d["license"]))
    header = ("name", "dim", "patch", "weights", "licence")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=False)) + "  " + r[4])
    if not (args.all or args.pattern):
        print("\n+ <architecture>.random for every architecture (emdino list --all)")
    print(f"default: {default_model()}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from emdino.loader import info

    d = info(args.name)
    if args.json:
        print(json.dumps(d, indent=2, default=list))
        return 0
    for k, v in d.items():
        if v in (None, "", ()):
            v = "unknown" if k in ("sha256", "size") else "-"
        print(f"{k:>21}: {v}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from emdino.models.registry import get_pretrained
    from emdino.weights.store import fetch

    cfg = get_pretrained(args.name)
    if cfg.random_init:
        print(f"{cfg.name} has no weights file (random initialisation)")
        return 0
    path = fetch(cfg, progress=not args.quiet)
    print(path)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    import em5m
    from emdino.features import extract_to_zarr

    volume = em5m.open_volume(args.input)  # a bad input fails before the model loads
    model = _load(args)
    start = time.perf_counter()
    out = extract_to_zarr(
        model,
        volume,
        args.out,
        tile=args.tile,
        overlap=args.overlap,
        batch_size=args.batch_size,
        levels=_levels(args.levels),
        store_dtype=args.store_dtype,
        overwrite=args.overwrite,
        progress=_Bars(not args.quiet),
    )
    if not args.quiet:
        print(f"{out} ({model.name}, {time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0


def cmd_pca(args: argparse.Namespace) -> int:
    import numpy as np

    import em5m
    from emdino.features import extract_features, grey_slices
    from emdino.viz import pca_figure, pca_rgb

    slices, _ = grey_slices(em5m.open_volume(args.input))
    model = _load(args)
    z = slices.shape[0] // 2 if args.z is None else args.z
    if not 0 <= z < slices.shape[0]:
        raise ValueError(f"--z {z} is outside the {slices.shape[0]} slices of {args.input}")
    image = np.asarray(slices[z].compute())
    feats = extract_features(model, image, tile=args.tile, overlap=args.overlap)
    rgb = pca_rgb(feats.patch)
    h, w = image.shape
    title = f"{model.name} | PCA of patch features as RGB | {h}x{w} px, slice {z}"
    if model.cfg.random_init:
        title += " | RANDOM weights: pipeline check, not meaningful features"
    out = pca_figure(image, rgb, args.out, size=args.size, title=title)
    if not args.quiet:
        print(out, file=sys.stderr)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from emdino.embed import embed_sources, write_parquet

    model = _load(args)
    table = embed_sources(
        model,
        args.inputs,
        tile=args.tile,
        batch_size=args.batch_size,
        progress=_Bars(not args.quiet),
    )
    out = write_parquet(table, args.out)
    if not args.quiet:
        print(f"{out}: {table.num_rows} embeddings of {model.embed_dim} values", file=sys.stderr)
    return 0


def cmd_umap(args: argparse.Namespace) -> int:
    from emdino.embed import read_embeddings
    from emdino.viz import project_2d, scatter_png

    emb, table = read_embeddings(args.embeddings)
    if args.color_by not in table.column_names:
        raise ValueError(
            f"{args.embeddings}: no column {args.color_by!r}; columns: "
            f"{', '.join(c for c in table.column_names if c != 'embedding')}"
        )
    if len(emb) < 3:
        raise ValueError(f"{args.embeddings}: {len(emb)} embeddings; a map needs at least 3")
    xy, label = project_2d(emb, args.method)
    if "not UMAP" in label:
        print(f"emdino: note: {label} (pip install umap-learn for UMAP)", file=sys.stderr)
    colours = [str(v) for v in table.column(args.color_by).to_pylist()]
    model = table.column("model")[0].as_py() if "model" in table.column_names else "?"
    axis = ("UMAP-1", "UMAP-2") if label == "UMAP" else ("PC1", "PC2")
    title = f"{label}\n{len(emb)} embeddings, model {model}, colour: {args.color_by}"
    if model.endswith(".random"):
        title += " (RANDOM weights: pipeline check)"
    out = scatter_png(xy, colours, args.out, title=title, axis_names=axis)
    if not args.quiet:
        print(out, file=sys.stderr)
    return 0


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="model name or checkpoint (emdino list)")
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=["fp32", "bf16", "fp16", "auto"],
        help="compute dtype (bf16/fp16 = autocast; auto = bf16 where the device computes it "
        "natively, else fp32)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emdino", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered models")
    p.add_argument("pattern", nargs="?", help="fnmatch pattern, e.g. '*dinov2*'")
    p.add_argument("--all", action="store_true", help="include <arch>.random for every arch")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="everything known about a model")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("download", help="fetch a model's weights into the cache")
    p.add_argument("name")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("features", help="tiled patch features of an image/volume to Zarr")
    p.add_argument("input")
    p.add_argument("--out", required=True, help="output .zarr (OME-Zarr image)")
    _model_options(p)
    p.add_argument("--tile", type=int, help="tile side in px (multiple of the patch size)")
    p.add_argument("--overlap", type=int, help="overlap in px (default tile / 4)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--levels", help="also write these blocks, e.g. 2,5,8,11")
    p.add_argument("--store-dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("pca", help="PCA of patch features as RGB next to the image (PNG)")
    p.add_argument("input")
    p.add_argument("--out", required=True, help="output .png")
    _model_options(p)
    p.add_argument("--z", type=int, help="slice of a volume (default: the middle one)")
    p.add_argument("--tile", type=int)
    p.add_argument("--overlap", type=int)
    p.add_argument("--size", type=int, default=400, help="panel side in the picture (px)")
    p.set_defaults(func=cmd_pca)

    p = sub.add_parser("embed", help="one embedding per image, slice or tile (Parquet)")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True, help="output .parquet")
    _model_options(p)
    p.add_argument("--tile", type=int, help="embed tiles of this many px instead of whole slices")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=cmd_embed)

    # Listed for --help only: main() hands `emdino pretrain ...` to emdino.ssl.train.
    sub.add_parser("pretrain", help="DINOv2 self-supervised pretraining (emdino pretrain -h)")

    p = sub.add_parser("umap", help="2D map of embeddings coloured by a column (PNG)")
    p.add_argument("embeddings", help="parquet from `emdino embed`")
    p.add_argument("--color-by", default="dataset", help="column to colour by")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument(
        "--method",
        default="auto",
        choices=["auto", "umap", "pca"],
        help="auto: UMAP if umap-learn is installed, else PCA (labelled)",
    )
    p.set_defaults(func=cmd_umap)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for user errors)."""
    # OpenMP threads spin while waiting: on a shared, oversubscribed CPU a ViT forward ran 20x
    # slower (measured). Passive waiting costs little otherwise; it must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pretrain"]:  # its options and errors belong to emdino.ssl
        from emdino.ssl.train import main as pretrain

        return pretrain(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (EMDinoError, ValueError, FileExistsError, FileNotFoundError) as e:
        # em5m.EMDataError is a ValueError and names the file; ours name model or file.
        print(f"emdino: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("emdino: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
