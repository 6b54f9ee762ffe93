"""``vitopt distill``: recover a compressed model from its dense teacher (manifold + logit distillation).

    vitopt distill --student out/slim --teacher deit_tiny_patch16_224 --checkpoint W \\
        --data train/ --val val/ --epochs 2 -o out/slim-recovered
Multi-GPU / multi-process: ``torchrun --nproc_per_node N -m optimizer.cli.main distill ...``.
"""
from __future__ import annotations

import os
import sys

from ..resources import resolve_device
from .common import add_json_arg, non_negative_int, write_json_result

REPORT = "distill_report.json"


def register(sub) -> None:
    p = sub.add_parser("distill", help="fine-tune a compressed model from its teacher (manifold distillation)")
    p.add_argument("--student", required=True, help="compressed model directory (or a timm name with "
                                                    "--student-checkpoint)")
    p.add_argument("--student-checkpoint", help="weights when --student is a timm name")
    p.add_argument("--teacher", required=True, help="dense teacher: timm name (with --checkpoint) or model directory")
    p.add_argument("--checkpoint", default=os.environ.get("VITOPT_CHECKPOINT") or None,
                   help="teacher weights (default: $VITOPT_CHECKPOINT)")
    p.add_argument("--data", required=True, help="training image folder (labels needed only with --alpha < 1)")
    p.add_argument("--synsets", help="synset list giving the label order (default: found beside the data)")
    p.add_argument("--val", help="held-out folder for periodic evaluation (top-1 and agreement with the teacher)")
    p.add_argument("-o", "--output", help="write the recovered model here (recipe.json + model.safetensors)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", help="passes over --data (default 1)")
    length.add_argument("--steps", help="optimizer steps (instead of --epochs)")
    p.add_argument("--lr", help="peak learning rate (default 5e-4 x global batch / 512)")
    p.add_argument("--batch-size", help="images per step and process (default 64)")
    p.add_argument("--alpha", help="weight of logit KD vs label CE, in [0, 1] (default 1: no labels needed)")
    p.add_argument("--beta", help="weight of the manifold (feature relation) loss (default 1; 0 = logit KD only)")
    p.add_argument("--holdout", help="share of --data held out of training (e.g. 0.1); the weights with the lowest "
                   "KL to the teacher on it are returned (default 0: off)")
    p.add_argument("--eval-every", help="steps between evaluations on --val (default: start and end only)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other DistillConfig field (repeatable), e.g. --set ema_decay=0.999")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--workers", default="2", help="data loader workers per process")
    p.add_argument("--seed", default="0")
    p.add_argument("--work-dir", help="resumable checkpoints (default: OUTPUT.distill-work when -o is given)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work-dir")
    add_json_arg(p)
    p.set_defaults(func=run, output_kind="compressed")


def _config(args):
    from ..compress.runner import parse_set_options
    from ..distill import DistillConfig
    opts = parse_set_options(args.set)
    for flag, field in (("epochs", "epochs"), ("steps", "steps"), ("lr", "lr"), ("batch_size", "batch_size"),
                        ("alpha", "alpha"), ("beta", "beta"), ("eval_every", "eval_every"), ("val", "val_dir"),
                        ("holdout", "holdout")):
        v = getattr(args, flag)
        if v is not None:
            if field in opts:
                from ..errors import VitoptError
                raise VitoptError(f"{field} is given both as a flag and with --set")
            opts[field] = v
    return DistillConfig.from_dict(opts)


def run(args) -> int:
    import torch
    from ..compress.registry import CompressContext
    from ..distill import recover
    from ..distributed import process_group, rank_device, rank_world
    from ..errors import VitoptError
    from ..models.loading import load_model
    cfg = _config(args)
    for path, what in ((args.data, "--data"), (args.val, "--val")):
        if path and not os.path.isdir(path):
            raise VitoptError(f"{what} directory not found: {path}")
    if args.output and os.path.exists(args.output) and not os.path.isdir(args.output):
        raise VitoptError(f"output {args.output} exists and is not a directory")
    device = resolve_device(args.device)
    work_dir = args.work_dir or (f"{args.output.rstrip('/')}.distill-work" if args.output else None)
    if args.resume and not work_dir:
        raise VitoptError("--resume needs --work-dir (or -o, whose work directory it then uses)")
    seed, workers = non_negative_int(args.seed, "--seed"), non_negative_int(args.workers, "--workers")

    student = load_model(args.student, args.student_checkpoint)
    if student.is_random:
        raise VitoptError(f"student {args.student} has random weights: give its checkpoint")
    teacher = load_model(args.teacher, args.checkpoint)
    if teacher.is_random:
        raise VitoptError(f"teacher {args.teacher} has random weights: give --checkpoint")
    with process_group(device) as group:
        world = rank_world()[1]
        if group.main:
            print(f"student: {student.describe()}\nteacher: {teacher.describe()}", file=sys.stderr)
        torch.manual_seed(seed)
        ctx = CompressContext(calib_dir=args.data, teacher=teacher.model, device=rank_device(device), workers=workers,
                              seed=seed, work_dir=work_dir, log=lambda s: print(s, file=sys.stderr),
                              synsets=args.synsets)
        report = recover(student.model, teacher.model, ctx, cfg, resume=args.resume)
        if not group.main:
            return 0
    student.model.to("cpu")
    fl = report["final_losses"]
    print(f"distilled {report['steps']} steps ({report['epochs']} epochs, {world} process(es)) in "
          f"{report['seconds']:.1f} s: " + " ".join(f"{k} {v:.4g}" for k, v in fl.items() if v))
    evals = report["evals"]
    if evals:
        a, b = evals[0], evals[-1]
        fmt = lambda r: (f"top-1 {r['top1']:.2f} % " if r.get("top1") is not None else "") + \
            (f"agreement {r['agreement']:.2f} %" if r.get("agreement") is not None else "")
        print(f"eval on {args.val}: step {a['step']}: {fmt(a)}" +
              (f"   ->   step {b['step']}: {fmt(b)}" if b is not a else ""))
    out = {"student": student.to_dict(), "teacher": teacher.to_dict(), "data": args.data, "val": args.val,
           "report": report, "output": args.output}
    if args.output:
        from ..compress.api import CompressedModel
        from ..compress.saving import compressed_from_loaded, save_compressed
        from ..fileio import write_json
        if student.weights == "compressed":
            cm = compressed_from_loaded(student)
        else:
            cm = CompressedModel(student.model, student.arch, student.model_kwargs, [], student.weights)
        save_compressed(args.output, cm)
        write_json(os.path.join(args.output, REPORT), out)
        print(f"saved to {args.output}")
    write_json_result(args.json, out)
    return 0
