"""``vitopt sweep RECIPE.yaml --vary STEP.OPTION=V1,V2 [--vary ...] -o OUT/``."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run a recipe over budgets / method combinations (resumable) into OUT/")
    p.add_argument("recipe", help="recipe YAML file (vitopt run's format)")
    p.add_argument("--vary", action="append", default=[], metavar="STEP.OPTION=V1,V2",
                   help="values of one step option (repeatable: every combination runs); 'off' removes the step")
    p.add_argument("-o", "--output", required=True, help="sweep directory (re-running it skips finished variants)")
    p.add_argument("--dry-run", action="store_true", help="list the variants and exit")
    p.set_defaults(func=run, output_grows=True)


def run(args) -> int:
    from ..pipeline.recipe import load_recipe
    from ..sweep import parse_vary, plan_variants, run_sweep
    from ..sweep.sweep import is_finished
    recipe = load_recipe(args.recipe)
    varies = [parse_vary(t) for t in args.vary]
    if args.dry_run:
        for v in plan_variants(recipe, varies):
            print(f"{v.name}\t{v.label}\t" + " -> ".join(s.kind for s in v.recipe.steps))
        return 0
    from ..distributed import process_group
    from ..resources import resolve_device
    # under torchrun every rank runs the variants' compression steps, rank 0 the rest and the files
    with process_group(resolve_device(recipe.device, "recipe device")) as group:
        meta = run_sweep(recipe, varies, args.output)
        if not group.main:
            return 0
    done = sum(is_finished(args.output, v["name"]) for v in meta["variants"])
    print(f"sweep: {done}/{len(meta['variants'])} variants finished in {args.output} "
          f"(vitopt report {args.output} writes the report)")
    return 0
