"""Recipes: every shipped recipe loads; overrides, unknown keys and bad values are reported."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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


def test_sgm_trains_the_full_softmax_where_the_other_rows_keep_the_recipes_shortlist():
    base = {"data": {"dir": "d"}, "train": {"shortlist": 1000, "shortlist_hard": 20}}
    for method in METHODS:
        r = recipe_from_dict(base, method_overrides(method))
        expected = (None, 0) if method == "sgm" else (1000, 20)
        assert (r.train.shortlist, r.train.shortlist_hard) == expected, method


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
    ("model.lexical_centroid=1.5", "model.lexical_centroid must be in [0, 1]"),
    ("model.lexical_centroid=-0.1", "model.lexical_centroid must be in [0, 1]"),
    ("model.lexical_centroid_terms=0", "model.lexical_centroid_terms must be a positive integer"),
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


# --- untrusted recipes: data, never a way out -------------------------------------------------

def _alias_bomb(levels: int = 9) -> str:
    """A few hundred bytes of YAML that expand to 9**levels strings ("billion laughs")."""
    rows = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    rows += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(rows) + f"\nname: *a{levels - 1}\n"


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    assert path.stat().st_size < 600
    with pytest.raises(ConfigError, match=r"bomb\.yaml:2: YAML aliases \(\*name\) are not allowed"):
        load_recipe(path)


def test_a_harmless_alias_is_refused_too(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data: {dir: &d x}\nname: *d\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_recipe(path)


@pytest.mark.parametrize("text", ["name: " + "[" * 100_000 + "]" * 100_000 + "\n",
                                  "data:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 60))],
                         ids=["flow", "block"])
def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path, text):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="nested deeper than 32 levels"):
        load_recipe(path)


def test_deep_nesting_in_plain_data_is_refused():
    raw: dict = {"data": {"dir": "d"}}
    node = raw
    for _ in range(100_000):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(ConfigError, match="nested deeper"):
        recipe_from_dict(raw)


def test_a_huge_recipe_file_is_refused_unread(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("data: {dir: d}\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="larger than 1,000,000 bytes"):
        load_recipe(path)


@pytest.mark.parametrize("content, fragment", [
    ("data: {dir: d}\ntrain: {epochs: " + "9" * 5000 + "}\n", "a value cannot be read"),
    ("\ufeffdata: {dir: d}\n".encode("utf-16"), "not UTF-8 text"),
    (b"data: {dir: d}\n\xe9t\xe9: 1\n", "not UTF-8 text"),
    (b"data: {dir: d}\x00\n", "not valid YAML"),
    ("- a\n- b\n", "a recipe is a mapping of sections, found list"),
], ids=["5000-digit-int", "utf-16", "latin-1", "nul-byte", "a-list"])
def test_unreadable_recipes_are_refused(tmp_path, content, fragment):
    path = tmp_path / "r.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(ConfigError, match=fragment):
        load_recipe(path)


def test_a_recipe_with_bom_and_crlf_loads(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"\xef\xbb\xbfdata:\r\n  dir: d\r\ntrain:\r\n  epochs: 2")
    assert load_recipe(path).train.epochs == 2


def test_a_folder_is_not_a_recipe(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        load_recipe(tmp_path)


def test_error_messages_quote_a_short_prefix_of_a_value():
    huge = "x" * 1_000_000
    with pytest.raises(ConfigError) as err:
        recipe_from_dict({"data": {"dir": "d", huge: 1}, "name": [huge] * 10_000,
                          "train": {"epochs": huge}}, [f"train.lr={huge}", huge])
    text = str(err.value)
    assert len(text) < 2000 and "5 problems" in text


@pytest.mark.parametrize("override", ["train.lr=.nan", "train.lr=.inf",
                                      "train.lr=-.inf", "train.grad_clip=.nan",
                                      "train.min_lr=-.inf", "loss.ot_weight=1e999",
                                      "model.dropout=.nan", "train.log_every=.inf"])
def test_numbers_that_are_not_finite_are_refused(override):
    with pytest.raises(ConfigError) as err:
        recipe_from_dict({"data": {"dir": "d"}}, [override])
    key = override.partition("=")[0]
    assert f"{key}: " in str(err.value) and "is not a finite number" in str(err.value)
    assert "1 problem:" in str(err.value)


@pytest.mark.parametrize("override,problem", [
    ("train.lr=nan", "train.lr: 'nan' is not a number"),  # text: numbers are digits
    ("train.epochs=0x10", "train.epochs: '0x10' is not an integer"),
    ("train.epochs=0o17", "train.epochs: '0o17' is not an integer"),
    ("train.epochs=1:30", "train.epochs: '1:30' is not an integer"),
    ("train.epochs=1_000", "train.epochs: '1_000' is not an integer"),
    ("train.epochs=3.0", "train.epochs: 3.0 is not an integer"),
    ("train.epochs=\u0663", "is not an integer"),
    ("model.light_conv=yes", "model.light_conv: 'yes' is not true or false"),
    ("model.light_conv=on", "model.light_conv: 'on' is not true or false"),
    ("name=1e3", "name: 1000.0 is not a string (quote it"),
])
def test_a_value_typed_as_something_else_is_refused_not_reread(override, problem):
    override = override.encode().decode("unicode_escape")
    with pytest.raises(ConfigError) as err:
        recipe_from_dict({"data": {"dir": "d"}}, [override])
    assert problem in str(err.value)


@pytest.mark.parametrize("override,key,value", [
    ("train.epochs=010", "epochs", 10), ("train.lr=1e-3", "lr", 0.001),
    ("train.lr=5E-4", "lr", 0.0005), ("train.lr=+.5", "lr", 0.5), ("train.epochs=+7", "epochs", 7),
])
def test_decimal_numbers_mean_what_they_say(override, key, value):
    recipe = recipe_from_dict({"data": {"dir": "d"}}, [override])
    assert getattr(recipe.train, key) == value


def test_a_section_override_merges_with_the_section():
    base = {"data": {"dir": "d"}, "train": {"epochs": 5, "batch_size": 7}}
    recipe = recipe_from_dict(base, ["train={epochs: 2, lr: 0.5}", "model={}"])
    assert (recipe.train.epochs, recipe.train.batch_size, recipe.train.lr) == (2, 7, 0.5)


def test_a_key_twice_in_a_recipe_file_is_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data: {dir: d}\ntrain:\n  epochs: 1\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"r.yaml:4: key 'epochs' appears twice"):
        load_recipe(path)


@pytest.mark.parametrize("name", ["1e3", "010", "yes", "0x1F", "1:30", "2024-01-02", "null"])
def test_what_xmtc_writes_reads_back_the_same(name):
    from xmtc_cli.recipefile import _parse_yaml

    recipe = recipe_from_dict({"name": "x", "data": {"dir": name}})
    assert _parse_yaml(recipe.to_yaml(), "r")["data"]["dir"] == name
    assert yaml.safe_load(recipe.to_yaml())["data"]["dir"] == name  # and for YAML 1.1


@pytest.mark.parametrize("override, fragment", [
    ("train.epochs=99999999999", "train.epochs: 99999999999 is larger than 2147483647"),
    ("data.max_labels=10001", "data.max_labels must be at most 10,000"),
    ("train.seed=-1", "train.seed must be >= 0"),
    ('data.dir="a\\0b"', "data.dir: 'a\\x00b' contains a NUL character"),
    ("train.lr=[unclosed", "override 'train.lr=[unclosed': not valid YAML"),
    ("train.lr=*a", "aliases"),
])
def test_numbers_and_strings_that_cannot_be_right_are_refused(override, fragment):
    with pytest.raises(ConfigError) as err:
        recipe_from_dict({"data": {"dir": "d"}}, [override])
    assert fragment in str(err.value)


@pytest.mark.parametrize("name", ["/abs/path", "../x", "..", ".", "a/b", "-rf", ".hidden",
                                  "a" * 101, "x\0y", "tab\tname", ""])
def test_names_that_would_leave_runs_are_refused(name):
    if name == "":  # empty: the recipe file's name is used instead
        assert recipe_from_dict({"data": {"dir": "d"}, "name": name}).name == ""
        return
    with pytest.raises(ConfigError, match="name"):
        recipe_from_dict({"data": {"dir": "d"}, "name": name})


def test_a_name_too_long_for_the_file_system_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read: File name too long"):
        load_recipe(tmp_path / ("x" * 300))
