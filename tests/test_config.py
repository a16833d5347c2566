"""Recipes: every shipped recipe loads; overrides, unknown keys and bad values are reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from xmtc_cli.config import METHODS, Recipe, load_recipe, method_overrides, recipe_from_dict
from xmtc_cli.errors import ConfigError

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def test_recipes_are_shipped():
    names = {p.stem for p in RECIPES}
    assert {"eurlex", "wiki10", "amazoncat13k", "amazon670k", "reuters", "demo"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
@pytest.mark.parametrize("method", [None, *METHODS])
def test_every_recipe_loads_under_every_method(path, method):
    recipe = load_recipe(path, method_overrides(method) if method else [])
    assert isinstance(recipe, Recipe)
    assert recipe.data.dir
    # The recipe's header says how to run it.
    assert "xmtc train" in path.read_text().split("\nname:")[0]


def test_paper_settings_of_table_2():
    wiki = load_recipe(RECIPES[0].parent / "wiki10.yaml")
    assert (wiki.model.bottleneck, wiki.model.conv_last_stride, wiki.loss.scheme) == (
        300, 4, "first-n")
    assert (wiki.train.epochs, wiki.data.max_src_tokens, wiki.data.max_labels) == (15, 2000, 30)
    a670 = load_recipe(RECIPES[0].parent / "amazon670k.yaml")
    assert (a670.loss.ot_weight, a670.model.light_conv, a670.model.bottleneck) == (0, False, 512)
    eur = load_recipe(RECIPES[0].parent / "eurlex.yaml")
    assert (eur.loss.scheme, eur.loss.ot_weight, eur.loss.empty_weight) == ("all", 8, 0.2)


def test_overrides_are_typed():
    r = recipe_from_dict({"data": {"dir": "d"}},
                         ["train.epochs=3", "train.lr=5e-4", "model.light_conv=false",
                          "model.conv_kernels=[3,5]", "model.bottleneck=null"])
    assert r.train.epochs == 3 and r.train.lr == 5e-4 and r.model.light_conv is False
    assert r.model.conv_kernels == (3, 5) and r.model.bottleneck is None


def test_methods_map_to_the_paper_switches():
    base = {"data": {"dir": "d"}}
    sgm = recipe_from_dict(base, method_overrides("sgm"))
    assert (sgm.loss.kind, sgm.data.label_order, sgm.model.global_embedding,
            sgm.model.masked_softmax, sgm.model.light_conv) == (
        "cross-entropy", "frequency", True, True, False)
    bm = recipe_from_dict(base, method_overrides("bm"))
    assert (bm.loss.kind, bm.loss.ot_weight, bm.model.light_conv) == ("matching", 0, False)
    # A user override given after the method wins.
    r = recipe_from_dict(base, method_overrides("bm") + ["model.light_conv=true"])
    assert r.model.light_conv is True


def test_unknown_method_suggests():
    with pytest.raises(ConfigError, match="did you mean sgm"):
        method_overrides("sgn")


def test_every_problem_is_listed_at_once_with_did_you_mean():
    with pytest.raises(ConfigError) as err:
        recipe_from_dict({"data": {"dri": "x"}, "loss": {"scheme": "first_n"}, "trian": {}})
    text = str(err.value)
    assert "3 problems" in text
    assert "did you mean data.dir?" in text
    assert "did you mean train?" in text
    assert "one of all | first-n" in text


@pytest.mark.parametrize("override, fragment", [
    ("train.epochs=0", "train.epochs must be a positive integer"),
    ("train.epochs=2.5", "train.epochs: 2.5 is not an integer"),
    ("model.light_conv=maybe", "model.light_conv: 'maybe' is not true or false"),
    ("model.dropout=1.5", "model.dropout must be in [0, 1)"),
    ("loss.kind=cross-entropy", "loss.ot_weight applies to the matching loss only"),
    ("train.epochs", "is not KEY=VALUE"),
    ("data.dir.sub=1", "data.dir is not a section"),
])
def test_bad_values_are_refused(override, fragment):
    with pytest.raises(ConfigError) as err:
        recipe_from_dict({"data": {"dir": "d"}}, [override])
    assert fragment in str(err.value)


def test_missing_data_dir(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match="data.dir is required"):
        load_recipe(path)


def test_yaml_errors_name_the_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  dir: d\ntrain: [unclosed\n")
    with pytest.raises(ConfigError, match=r"r\.yaml:\d+: not valid YAML"):
        load_recipe(path)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_round_trip_through_yaml(tmp_path):
    r = recipe_from_dict({"data": {"dir": "d"}},
                         ["model.conv_kernels=[3,7]", "loss.scheme=first-n"])
    path = tmp_path / "r.yaml"
    path.write_text(r.to_yaml())
    assert load_recipe(path) == r
