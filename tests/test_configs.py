"""The recipes in configs/ are valid, and the reproduce chain is consistent: every config parses
and builds its model, every teacher or starting checkpoint a config reads is the output of another
config, and reproduce-default.sh trains each of them before the run that reads it, then recalibrates
and exports the last one. configs/ holds only recipes a user runs; research/configs/ (experiments a
researcher may rerun) is held to the same checks."""
import re
from dataclasses import asdict

import pytest

from emo.edge_runtime.errors import EmoError
from emo.train.config import TrainConfig, build_config, read_recipe, tomllib
from emo.train.models import build_model

from conftest import REPO

RECIPES = REPO / "configs"
RESEARCH = REPO / "research" / "configs"
CONFIGS = sorted(RECIPES.glob("*.toml")) + sorted(RESEARCH.glob("*.toml"))
CHAIN = (RECIPES / "reproduce-default.sh").read_text()
LADDER = (RECIPES / "reproduce-ladder.sh").read_text()
# runs the ladder script joins with `emo-train ensemble ... --name NAME` (continued lines joined)
ENSEMBLES = re.findall(r"^emo-train ensemble .*--name (\S+)", LADDER.replace("\\\n", " "), flags=re.M)
# what a user runs beside the ladder: the seed CNN, fine-tuning, and the robustness recipes
USER_RECIPES = re.compile(r"(seed|seed-original|finetune.*|robust-.*)")


def _run_name(path: str) -> str:
    """runs/NAME/model.pt, or runs/fold-teachers/NAME.pt: the float16 copy of it that
    research/configs/reproduce-heldout.sh keeps (`emo-train half`)."""
    m = re.fullmatch(r"runs/([\w.-]+)/model\.pt", path) or re.fullmatch(r"runs/fold-teachers/([\w.-]+)\.pt", path)
    assert m, f"{path} is not runs/NAME/model.pt or runs/fold-teachers/NAME.pt"
    return m.group(1)


def _inputs(cfg) -> list[str]:
    """Run names of the teachers and starting checkpoint a recipe reads (the shipped checkpoints in
    models/, which the robustness recipes start from, are not runs)."""
    return [_run_name(p) for p in [*cfg.teachers, cfg.init_from] if p and not p.startswith("models/")]


def _recipe(name: str):
    """The recipe that trains runs/NAME: configs/NAME.toml, else research/configs/NAME.toml."""
    for folder in (RECIPES, RESEARCH):
        if (folder / f"{name}.toml").is_file():
            return folder / f"{name}.toml"
    return None


def _bases(path) -> list:
    """The recipe and every recipe it builds on, through `base = ...`."""
    chain = [path.resolve()]
    while "base" in (own := tomllib.loads(chain[-1].read_text())):
        chain.append((chain[-1].parent / own["base"]).resolve())
    return chain


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_builds(path):
    cfg = build_config(path, {})
    build_model(cfg.arch, **cfg.arch_args)
    for shipped in [p for p in [*cfg.teachers, cfg.init_from] if p.startswith("models/")]:
        assert (REPO / shipped).is_file(), f"{path.name} reads {shipped}, which the repository does not keep"
    for dep in _inputs(cfg):  # each input is the run of a config in configs/, or its recalibrated copy,
        if dep in ENSEMBLES:  # or an ensemble that reproduce-ladder.sh joins (`emo-train ensemble ... --name NAME`)
            continue
        base = dep.removesuffix("-bn")  # runs/NAME-bn: `emo-train recalibrate runs/NAME/model.pt`
        dep_path = _recipe(base)
        assert dep_path and build_config(dep_path, {}).name == base, f"{path.name} reads runs/{dep}, which no config trains"
    if path.parent == RECIPES:  # a recipe a user runs never builds on an experiment
        assert all(p.parent == RECIPES for p in _bases(path)), f"{path.name} builds on a recipe outside configs/"


def test_reproduce_chain_trains_inputs_first():
    stages = re.findall(r"^stage (\S+) configs/(\S+)\.toml$", CHAIN, flags=re.M)
    assert stages and all(name == cfg for name, cfg in stages)
    order = [name for name, _ in stages]
    for name in order:
        cfg = build_config(REPO / "configs" / f"{name}.toml", {})
        assert cfg.name == name  # the run folder other configs read it from
        for dep in _inputs(cfg):
            assert dep in order and order.index(dep) < order.index(name), f"{name} reads {dep} before it is trained"
    recalibrated = re.search(r'^emo-train recalibrate "\$out/([\w.-]+)/model\.pt" .*--out "\$out"', CHAIN, flags=re.M).group(1)
    assert recalibrated == order[-1]
    hardened = re.search(r'^emo-train harden "\$out/([\w.-]+)/model\.pt" .*--out "\$out" --name ([\w.-]+)', CHAIN, flags=re.M)
    assert hardened.group(1) == f"{recalibrated}-bn"  # the recalibrated copy of the last stage is hardened,
    exported = re.search(r'^emo-export "\$out/([\w.-]+)/model\.pt"', CHAIN, flags=re.M).group(1)
    assert exported == hardened.group(2)  # and that is what is exported
    assert f'"$out/{exported}/model.pt"' in LADDER  # large's first member


def _staged(script: str, folder: str = "configs") -> list[str]:
    """The recipe names a reproduce script trains (`stage NAME configs/NAME.toml`, or a name list
    it hands to `stage`), each checked to exist."""
    return re.findall(rf"\b{folder}/([\w.-]+)\.toml\b", script)


@pytest.mark.parametrize("script", ["reproduce-default.sh", "reproduce-ladder.sh"])
def test_reproduce_scripts_name_recipes_that_exist(script):
    names = _staged((RECIPES / script).read_text())
    assert names, f"{script} names no recipe"
    for name in names:
        assert (RECIPES / f"{name}.toml").is_file(), f"{script} trains configs/{name}.toml, which does not exist"


def test_configs_holds_only_recipes_a_user_runs():
    """configs/ is the ladder (every recipe the two reproduce scripts train, and the recipes they
    build on), the seed CNN, fine-tuning and robustness; experiments live in research/configs/."""
    ladder = {b for name in _staged(CHAIN) + _staged(LADDER) for b in _bases(RECIPES / f"{name}.toml")}
    extra = [p.name for p in RECIPES.glob("*.toml") if p.resolve() not in ladder and not USER_RECIPES.fullmatch(p.stem)]
    assert not extra, f"configs/ holds recipes no user runs (move them to research/configs/): {extra}"
    assert {p.stem for p in RECIPES.glob("*.toml")} >= {"emonet-kd3", "emonet-tiny3", "emonet-wkd", "emonet-dkd", "seed"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_holds_only_what_differs(path):
    """No key restates the trainer's default or the value the recipe's base already gives it."""
    own = tomllib.loads(path.read_text())
    base = read_recipe(path.parent / own["base"]) if "base" in own else {}
    defaults = asdict(TrainConfig())
    for k, v in own.items():
        if k != "base":
            assert v != base.get(k, defaults[k]), f"{path.name}: {k} = {v!r} restates its base or the default"


def test_base_chain(tmp_path):
    (tmp_path / "a.toml").write_text('lr = 0.5\nepochs = 3\narch_args = { dropout = 0.1 }\nname = "a-run"\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\nepochs = 4\n')
    cfg = build_config(tmp_path / "b.toml", {"seed": 9})
    assert (cfg.lr, cfg.epochs, cfg.arch_args, cfg.seed) == (0.5, 4, {"dropout": 0.1}, 9)
    assert cfg.name == "b"  # a run name is never inherited; it defaults to the recipe's file name
    (tmp_path / "c.toml").write_text('base = "c.toml"\n')
    with pytest.raises(EmoError, match="names itself as a base"):
        build_config(tmp_path / "c.toml", {})
    (tmp_path / "d.toml").write_text('base = "nope.toml"\n')
    with pytest.raises(EmoError, match="does not exist"):
        build_config(tmp_path / "d.toml", {})


