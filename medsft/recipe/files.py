"""Reading a recipe file: YAML (duplicate keys refused), the notebook's flat config.yaml, `--set` overrides.

Why: what the user typed must be what is trained. YAML silently keeps the last of two equal keys (a
second `training:` section replaces the first); a `--set` value parsed as YAML loses everything after
` #` (a comment). Both are refused or read literally here, before the recipe is validated
(medsft/recipe/schema.py) and long before torch is imported.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from medsft.errors import MedsftError, did_you_mean
from medsft.recipe.schema import SECTIONS, Recipe, build

NOTEBOOK_TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
# The notebook's flat config.yaml: key -> (section.key, how the notebook read the value)
NOTEBOOK_KEYS: dict[str, tuple[str, type | None]] = {
    "base_model_name": ("model.name", str), "adapter_dir_prefix": ("output.adapter_dir", str),
    "lora_rank": ("lora.rank", None), "lora_alpha": ("lora.alpha", None),
    "batch_size": ("training.per_device_train_batch_size", int), "epochs_to_train": ("training.num_train_epochs", int),
    "max_output_length": ("training.max_length", int),
}
NOTEBOOK_SETTINGS: dict[str, dict[str, Any]] = {
    "lora": {"dropout": 0.05, "bias": "none", "target_modules": NOTEBOOK_TARGETS},
    "training": {
        "learning_rate": 2e-5, "gradient_accumulation_steps": 4, "logging_steps": 50, "save_strategy": "steps",
        "eval_strategy": "steps", "eval_steps": 100, "save_steps": 100, "bf16": True, "gradient_checkpointing": True,
        "loss_type": "dft", "completion_only_loss": True,
    },
    "output": {"dir": "./results"},
}


MERGE_TAG = "tag:yaml.org,2002:merge"
ANCHORS = "x-"  # top-level keys that only hold shared values for `<<: *name` (Compose's convention); not sections
MAX_NODES = 20_000  # a recipe has a few hundred; "billion laughs" aliases expand past any bound in a few lines


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read, convert (notebook format), override and validate a recipe. Raises MedsftError."""
    where = str(path)
    raw = read_yaml(path)
    raw = {k: v for k, v in raw.items() if not (isinstance(k, str) and k.startswith(ANCHORS))}
    try:
        if is_notebook_config(raw):
            raw = from_notebook(raw)
        raw = copy.deepcopy(raw)
        for item in overrides or []:
            apply_override(raw, item)
        output = raw.get("output")
        if not isinstance(output, dict) or not output.get("dir"):  # one run directory per recipe by default
            raw["output"] = {**(output if isinstance(output, dict) else {}), "dir": f"runs/{Path(path).stem}"}
    except MedsftError as err:
        raise err.at(where) from None
    recipe = build(raw, where)
    check_output_paths(recipe)
    return recipe


def check_output_paths(recipe: Recipe) -> None:
    """Where the run writes, checked before anything is loaded."""
    from medsft.io.outputs import check_writable_dir

    for key in ("dir", "adapter_dir"):
        value = getattr(recipe.output, key)
        if value is not None:
            try:
                check_writable_dir(Path(value), f"output.{key}")
            except MedsftError as err:
                raise err.at(recipe.source_file) from None


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last silently). Merge keys
    (`<<: *defaults`) stay YAML's: a key written beside them overrides the merged one, as intended."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise MedsftError(f"key {key!r} appears twice (lines {seen[key]} and {key_node.start_mark.line + 1})",
                                  "keep one: YAML would silently use the last")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def expanded_size(node: Any, sizes: dict[int, int] | None = None) -> int:
    """How many nodes `node` stands for once every alias is expanded (each shared node counted once per use)."""
    sizes = {} if sizes is None else sizes
    if id(node) not in sizes:
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        sizes[id(node)] = 1 + sum(expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def load_yaml(text: str) -> Any:
    """YAML text as Python values (safe types only, duplicate keys refused); aliases that would expand past
    MAX_NODES are refused before anything is built from them."""
    loader = UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if expanded_size(node) > MAX_NODES:
            raise MedsftError(f"its aliases expand to more than {MAX_NODES:,} values (nested `*alias` references)",
                              "write the values out, or use fewer nested aliases")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike[str]) -> dict:
    p = Path(path)
    if not p.exists():
        raise MedsftError("recipe file not found", "check the path (recipes live in recipes/)", str(path))
    if p.is_dir():
        raise MedsftError("is a directory, not a recipe file", "pass a .yaml file", str(path))
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MedsftError("is not UTF-8 text", "save the recipe as UTF-8 YAML", str(path)) from None
    try:
        raw = load_yaml(text)
    except MedsftError as err:
        raise err.at(str(path)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise MedsftError(f"malformed YAML{at}: {problem}", "fix the YAML syntax", str(path)) from None
    if raw is None:
        raise MedsftError("recipe is empty", "copy recipes/tiny-cpu.yaml as a start", str(path))
    if not isinstance(raw, dict):
        raise MedsftError(f"recipe must be a mapping of sections, got {type(raw).__name__}",
                          "write `model:`, `data:`, `training:` … sections", str(path))
    return raw


def is_notebook_config(raw: dict) -> bool:
    return "base_model_name" in raw and not (set(raw) & set(SECTIONS) - {"output"})


def from_notebook(raw: dict) -> dict:
    """The notebook's flat config.yaml as a sectioned recipe with the notebook's other settings."""
    out = copy.deepcopy(NOTEBOOK_SETTINGS)
    for key, value in raw.items():
        if key not in NOTEBOOK_KEYS:
            raise MedsftError(f"unknown key '{key}' in a notebook config.yaml", did_you_mean(key, NOTEBOOK_KEYS))
        target, cast = NOTEBOOK_KEYS[key]
        if cast is not None:
            try:
                value = cast(value)  # the notebook did int(config["batch_size"]) etc.
            except (TypeError, ValueError):
                raise MedsftError(f"{key} must be {cast.__name__} (got {value!r})", f"write e.g. `{key}: 4`") from None
        section, name = target.split(".")
        out.setdefault(section, {})[name] = value
    for required in ("base_model_name", "adapter_dir_prefix"):
        if required not in raw:
            raise MedsftError(f"notebook config.yaml needs '{required}'", f"add `{required}: ...`")
    # the notebook saved the adapter to join(adapter_dir_prefix, base_model_name)
    out["output"]["adapter_dir"] = os.path.join(str(raw["adapter_dir_prefix"]), str(raw["base_model_name"]))
    return out


def parse_value(text: str) -> Any:
    """A `--set` value: a YAML scalar or flow list/mapping when it is one, else the text itself (a ` #`
    inside is part of the value, not a comment)."""
    stripped = text.strip()
    if not stripped:
        return None
    if "#" in stripped and not stripped.startswith(("[", "{")):
        return text
    try:
        value = load_yaml(stripped)
    except (yaml.YAMLError, MedsftError):
        return text
    return value if isinstance(value, (str, int, float, bool, list, dict)) else text


def apply_override(raw: dict, item: str) -> None:
    if "=" not in item:
        raise MedsftError(f"--set {item!r} is not key=value", "write e.g. --set training.learning_rate=1e-4")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise MedsftError(f"--set key {key!r} must be section.key", "write e.g. --set lora.rank=32")
    section, name = parts
    if section not in SECTIONS and section != "training":
        raise MedsftError(f"unknown section '{section}' in --set {item}", did_you_mean(section, [*SECTIONS, "training"]))
    current = raw.get(section)
    if current is None:
        raw[section] = current = {}
    if not isinstance(current, dict):
        raise MedsftError(f"section '{section}' must be a mapping", f"write `{section}:` followed by indented keys")
    current[name] = parse_value(value)
