"""``vitopt run RECIPE.yaml -o OUT/``: chain the steps of a recipe, with a manifest of every artifact."""
from __future__ import annotations

from .common import add_json_arg, write_json_result


def register(sub) -> None:
    p = sub.add_parser("run", help="run a YAML recipe (compress, eval, export, build, bench) into OUT/")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("-o", "--output", required=True, help="output directory (a previous run output is replaced atomically on success)")
    add_json_arg(p)
    p.set_defaults(func=run, output_kind="run")


def run(args) -> int:
    from ..pipeline.recipe import load_recipe
    from ..pipeline.run import run_recipe
    from ..distributed import process_group
    from ..resources import resolve_device
    recipe = load_recipe(args.recipe)
    # under torchrun every rank runs the compression steps, rank 0 the rest (pipeline.run)
    with process_group(resolve_device(recipe.device, "recipe device")) as group:
        manifest = run_recipe(recipe, args.output)
        if not group.main:
            return 0
    print(f"run: {len(manifest['artifacts'])} artifacts in {args.output} (manifest.json lists their sha256)")
    write_json_result(args.json, manifest)
    return 0
