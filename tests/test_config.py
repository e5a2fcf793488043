"""Recipes: strict typed config, did-you-mean errors, --set overrides."""

from pathlib import Path

import pytest

from softmaso.config import RunConfig, describe_keys, dump_yaml, load_recipe, parse_override
from softmaso.errors import UserError

RECIPES = sorted(
    Path(__file__).resolve().parent.parent.joinpath("softmaso", "recipes").rglob("*.yaml")
)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    cfg = load_recipe(path)
    assert cfg.recipe == path.stem
    assert load_recipe(path, []) == cfg


def test_table2_recipes_follow_the_paper_and_authors():
    for name, bs, epochs in (("cifar10", 50, 150), ("svhn", 50, 150), ("cifar100", 100, 200)):
        cfg = load_recipe(_find(name))
        assert (cfg.data.name, cfg.optim.batch_size, cfg.train.epochs) == (name, bs, epochs)
        assert cfg.model.width == 1.0 and cfg.ortho.weight == 1.0 and not cfg.data.augment


def _find(name):
    return next(p for p in RECIPES if p.parent.name == "table2" and p.stem == name)


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_key_file_and_closest(tmp_path):
    p = _write(tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(UserError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "optim.lrr" in msg and str(p) in msg and "did you mean 'optim.lr'" in msg


def test_wrong_value_names_key_and_what_is_allowed(tmp_path):
    with pytest.raises(
        UserError, match=r"ortho.mode.*'none', 'penalty', 'exact', 'so', 'srip' or 'torch'"
    ):
        load_recipe(_write(tmp_path, "ortho:\n  mode: sometimes\n"))
    with pytest.raises(UserError, match=r"--set optim.batch_size.*greater than 0"):
        load_recipe(_write(tmp_path, "seed: 0\n"), ["optim.batch_size=0"])


def test_set_overrides_parse_yaml_values(tmp_path):
    cfg = load_recipe(
        _write(tmp_path, "optim:\n  lr: 0.1\n"), ["optim.lr=5e-4", "data.augment=true"]
    )
    assert cfg.optim.lr == 0.0005 and cfg.data.augment is True


@pytest.mark.parametrize(
    ("text", "says"),
    [("optim.lr", "KEY=VALUE"), ("optim.lrr=1", "did you mean"), ("=3", "KEY=VALUE")],
)
def test_bad_set_is_clear(text, says):
    with pytest.raises(UserError, match=says):
        parse_override(text)


def test_bad_yaml_and_non_mapping(tmp_path):
    with pytest.raises(UserError, match="invalid YAML at line"):
        load_recipe(_write(tmp_path, "optim: [\n"))
    with pytest.raises(UserError, match="mapping"):
        load_recipe(_write(tmp_path, "- 1\n- 2\n"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    with pytest.raises(UserError, match="not a text file"):
        load_recipe(binary)


def test_config_is_frozen_and_round_trips(tmp_path):
    cfg = load_recipe(RECIPES[0])
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error
        cfg.seed = 3  # type: ignore[misc]
    p = _write(tmp_path, dump_yaml(cfg))
    assert load_recipe(p).model_dump(exclude={"recipe"}) == cfg.model_dump(exclude={"recipe"})
    assert cfg.with_overrides(seed=4).seed == 4


def test_every_key_documents_itself():
    rows = describe_keys()
    assert len(rows) > 20 and all(desc for _, _, desc in rows)
    assert {k for k, _, _ in rows} >= {
        "data.name",
        "data.subset",
        "model.width",
        "ortho.weight",
        "optim.lr",
        "optim.batch_size",
        "train.epochs",
        "seed",
    }
    assert RunConfig().data.name == "cifar10"


def test_print_config_cli(cli):
    r = cli("train", str(RECIPES[-1]), "--print-config", "--set", "seed=7")
    assert r.exit_code == 0 and "seed: 7" in r.stdout
    r = cli("train", str(RECIPES[-1]), "--set", "optim.lrr=1")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "optim.lr" in r.stderr


def test_readme_documents_every_recipe_key_as_config_does():
    readme = (
        (Path(__file__).resolve().parent.parent / "docs" / "reference.md").read_text().splitlines()
    )
    rows = {line.split(" | ")[0][2:]: line for line in readme if line.startswith("| `")}
    stale = [
        key
        for key, default, text in describe_keys()
        if rows.get(f"`{key}`") != f"| `{key}` | `{default}` | {text} |"
    ]
    assert not stale, f"docs/reference.md's recipe key table differs from config.py for {stale}"


def test_duplicate_keys_and_empty_recipes_are_errors(tmp_path):
    p = _write(tmp_path, "optim:\n  lr: 0.1\ntrain:\n  epochs: 3\noptim:\n  lr: 0.2\n")
    with pytest.raises(UserError, match=r"key 'optim' appears twice .*lines 1 and 5"):
        load_recipe(p)
    p = _write(tmp_path, "optim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(UserError, match="'lr' appears twice"):
        load_recipe(p)
    for text in ("", "\n# only a comment\n"):
        with pytest.raises(UserError, match="the recipe is empty"):
            load_recipe(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=true", "not a boolean"),
        ("optim.lr=false", "not a boolean"),
        ("optim.lr=.inf", "finite number"),
        ("optim.lr=.nan", "finite number"),
        ("ortho.weight=.inf", "finite number"),
        ("model.width=1000", "less than or equal to 16"),  # would allocate ~331 GB
        ("seed=99999999999999999999", "less than 4294967296"),  # torch's seed overflows
    ],
)
def test_booleans_are_not_numbers_and_numbers_are_finite(override, message):
    with pytest.raises(UserError, match=message) as e:
        RunConfig().with_overrides(**dict([parse_override(override)]))
    assert e.value.where.startswith("--set")


def test_a_recipe_declares_its_endpoint_and_baseline(tmp_path):
    from softmaso.config import Endpoint, read_recipe

    path = tmp_path / "r.yaml"
    path.write_text(
        "data:\n  name: synthetic\nreport:\n  endpoint: last:5\n  baseline: model.activation=relu\n"
    )
    report = read_recipe(path).report
    assert report.endpoint == Endpoint("last", 5)
    assert report.endpoint.text == "last:5"
    assert report.baseline == (("model.activation", "relu"),)
    # the report section is not a config key: the run's config is untouched by it
    assert "report" not in read_recipe(path).config().to_dict()
    path.write_text(
        "data:\n  name: synthetic\nreport:\n  baseline: [model.activation=relu, ortho.mode=none]\n"
    )
    assert read_recipe(path).report.baseline == (
        ("model.activation", "relu"),
        ("ortho.mode", "none"),
    )
    path.write_text("data:\n  name: synthetic\n")
    assert read_recipe(path).report.endpoint.text == "final"


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ("  endpoint: last:0\n", "endpoint 'last:0' is not one of final, best, last:K"),
        ("  endpoint: mean\n", "endpoint 'mean' is not one of final, best, last:K"),
        ("  baseline: ortho.mod=none\n", "is not KEY=VALUE with a config key"),
        ("  baseline: none\n", "is not KEY=VALUE with a config key"),
        ("  baseline: [ortho.mode=none, ortho.mode=exact]\n", "a key is given twice"),
        ("  baseline: []\n", "give at least one KEY=VALUE"),
        ("  epochs: 3\n", "report: unknown key 'epochs'; allowed: endpoint, baseline"),
    ],
)
def test_a_bad_report_section_is_one_clear_line(tmp_path, section, says):
    from softmaso.config import read_recipe

    path = tmp_path / "r.yaml"
    path.write_text("data:\n  name: synthetic\nreport:\n" + section)
    with pytest.raises(UserError) as err:
        read_recipe(path)
    assert says in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("command", [["train", "smoke"], ["reproduce", "fashion", "--smoke"]])
def test_threads_beyond_the_machine_are_one_line(cli, command, tmp_path):
    from softmaso.devices import cpu_cores

    r = cli(*command, "--threads", str(cpu_cores() + 1), "--results" if "reproduce" in command
            else "--out", str(tmp_path / "x"))  # fmt: skip
    assert r.exit_code == 2 and "--threads" in r.stderr and "between 1 and" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_an_alias_bomb_is_refused_at_once_and_errors_stay_short(cli, tmp_path):
    lines = ["data: {name: synthetic}", 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefg", "bcdefgh", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")  # 6 x 9^7 values
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join([*lines, "model: {width: *h}"]) + "\n")
    r = cli("train", bomb, "--print-config")
    assert r.exit_code == 2 and "aliases expand it to more than 100,000 values" in r.stderr
    small = tmp_path / "small.yaml"  # a few aliases are fine, and a bad value shows briefly
    small.write_text("\n".join([*lines[:4], "model: {width: *c}"]) + "\n")
    r = cli("train", small, "--print-config")
    assert r.exit_code == 2 and "model.width" in r.stderr and len(r.stderr) < 400


def test_apodised_exact_filters_are_refused_before_they_give_nan(tmp_path):
    """Centred filters cannot be orthonormal where a layer has as many filters as values per
    filter (largeCNN's 1x1 conv): exact + apodize trained to NaN at the first step."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("ortho:\n  apodize: true\n")
    with pytest.raises(UserError, match="apodize with mode exact"):
        load_recipe(recipe, ["ortho.mode=exact"])
    assert load_recipe(recipe, ["ortho.mode=penalty"]).ortho.apodize
