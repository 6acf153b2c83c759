"""Export a trained checkpoint's CLIP, LoRA merged, as a standard open_clip state dict.

    python pipelines/export.py --checkpoint runs/NAME/checkpoints/best.pt --out clip-merged.safetensors

The file loads without this project: open_clip.create_model(MODEL, pretrained=FILE) (the
model name is printed and stored in the file's metadata). HiVG's bridge and box head are not
part of open_clip's model and are not exported.
"""
from __future__ import annotations

from hivg.cli import run_main
from hivg.cli_args import Parser


def main() -> int:
    p = Parser(description=__doc__)
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by train.py")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    args = p.parse_args()
    from hivg.train.export import export_open_clip

    export_open_clip(args.checkpoint, args.out)
    return 0


if __name__ == "__main__":
    run_main(main)
