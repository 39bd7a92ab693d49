"""From command line to composed config.

Both command forms end up in one Hydra composition:

    sequifier train --config-path configs/train.yaml [key=value ...]
    sequifier-train +model_spec=gqa training_spec.lr=3e-4 [-m] [--cfg job]

The packaged primary config (`conf/<command>.yaml`, shipped as `sequifier.conf`) lists, in order, the typed
schema, the user's YAML file (registered here as `user_config/<command>`) and then
whatever presets the command line appends, so precedence is: schema defaults < YAML <
appended presets < key=value overrides.

`--config-path` may name a YAML file (the spec's usage) or, as in Hydra, a folder that
`--config-name` picks a file from. Without either, `configs/<command>.yaml` in the
current folder is used when it exists.
"""

import copy
import dataclasses
import difflib
import os
import re
import typing
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from sequifier.config.schema import SCHEMAS
from sequifier.errors import SequifierError
from sequifier.project import CONFIGS, user_config_path

CONFIG_GROUPS = ("model_spec", "training_spec", "attention", "optimizer", "scheduler",
                 "hparams_search", "user_config")
# Short names accepted for a field, in YAML and on the command line.
ALIASES = {("training_spec", "lr"): ("training_spec", "learning_rate")}
# Groups whose preset replaces a whole block instead of merging into it: the primary
# config's defaults list holds `GROUP: from_yaml`, an option made of the YAML's own block,
# so `optimizer=sgd` swaps the YAML's block for the preset's and leaves no stale keys.
BLOCK_GROUPS = {"optimizer": ("training_spec", "optimizer"), "scheduler": ("training_spec", "scheduler")}
FROM_YAML = "from_yaml"
_PATH_FLAGS = {"--config-path": "path", "-cp": "path", "--config-name": "name", "-cn": "name"}


def split_config_flags(argv: List[str]) -> Tuple[Optional[str], Optional[str], List[str]]:
    """Take --config-path/--config-name (and -cp/-cn) out of argv."""
    path = name = None
    rest: List[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        if flag in _PATH_FLAGS:
            if not eq:
                if i + 1 >= len(argv):
                    raise SequifierError(f"{flag} needs a value (a YAML file or a folder)")
                value = argv[i + 1]
                i += 1
            if _PATH_FLAGS[flag] == "path":
                path = value
            else:
                name = value
        else:
            rest.append(arg)
        i += 1
    return path, name, rest


def find_user_config(command: str, path: Optional[str], name: Optional[str]) -> Optional[str]:
    """The user's YAML file for `command`, or None when there is none to use."""
    def with_ext(p: str) -> str:
        return p if p.endswith((".yaml", ".yml")) else p + ".yaml"

    if path is None and name is None:
        default = user_config_path(command)
        return default if os.path.isfile(default) else None
    if path is not None and os.path.isfile(path):
        candidate = path
    elif path is not None and os.path.isdir(path):
        candidate = os.path.join(path, with_ext(name or command))
    elif path is not None and (path.endswith((".yaml", ".yml")) or name is None):
        candidate = path
    else:
        candidate = os.path.join(path or CONFIGS, with_ext(name))
    if not os.path.isfile(candidate):
        raise SequifierError(
            f"config file '{candidate}' not found; pass --config-path with the path to your "
            f"{command}.yaml (e.g. {user_config_path(command)}) or run `sequifier make NAME` for templates"
        )
    return candidate


def _did_you_mean(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _schema_fields(schema) -> Dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(schema)}


def _nested_schema(schema, key):
    """The dataclass type of field `key`, or None for leaves and free-form dicts."""
    default_factory = _schema_fields(schema)[key].default_factory
    if default_factory is not dataclasses.MISSING:
        value = default_factory()
        if dataclasses.is_dataclass(value):
            return type(value)
    return None


def unknown_key_problems(schema, node: Any, prefix: str = "") -> List[str]:
    """One line per key of `node` that the schema does not have, with a suggestion."""
    if not isinstance(node, dict):
        return []
    fields = _schema_fields(schema)
    problems = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        if key == "defaults":
            continue
        if key not in fields:
            problems.append(f"{path}: unknown field{_did_you_mean(str(key), fields)}")
            continue
        sub = _nested_schema(schema, key)
        if sub is not None and isinstance(value, dict):
            problems.extend(unknown_key_problems(sub, value, path + "."))
    return problems


def full_key(key: str) -> str:
    """The full name of a dotted key that is an alias (`training_spec.lr`), else the key."""
    return ".".join(ALIASES.get(tuple(key.split(".")), key.split(".")))


def fold_aliases(node: Dict[str, Any], source: str) -> None:
    """Rename alias keys (training_spec.lr) in a plain dict, in place."""
    for (section, alias), (_, full) in ALIASES.items():
        sub = node.get(section)
        if not isinstance(sub, dict) or alias not in sub:
            continue
        value = sub.pop(alias)
        if value is None:  # the schema's unset alias
            continue
        if sub.get(full, "???") not in ("???", None) and sub[full] != value:
            raise SequifierError(
                f"{section}.{alias} ({value}) and {section}.{full} ({sub[full]}) disagree in "
                f"{source}; {alias} is a short name for {full}: give only one"
            )
        sub[full] = value


def load_user_config(command: str, path: Optional[str]) -> Dict[str, Any]:
    """Read the user's YAML into a plain dict, with unknown keys reported."""
    if path is None:
        return {}
    try:
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:  # yaml errors carry line numbers; keep them on one line
        raise SequifierError(f"config file '{path}' is not valid YAML: {' '.join(str(e).split())}") from None
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise SequifierError(f"config file '{path}' must hold a mapping of fields, not {type(node).__name__}")
    fold_aliases(node, path)
    problems = unknown_key_problems(SCHEMAS[command], node)
    if problems:
        raise SequifierError("\n".join(f"{p} (in {path})" for p in problems))
    return node


_OVERRIDE = re.compile(r"^(?P<prefix>\+\+|\+|~)?(?P<key>[A-Za-z_][\w.]*)(?P<rest>(=.*)?)$")


def rewrite_overrides(command: str, args: List[str]) -> List[str]:
    """Put command-line overrides in the form Hydra needs, or refuse them with one line each.

    - alias keys get their full names (`training_spec.lr` -> `training_spec.learning_rate`);
      an alias and its full name with different values is an error, not "last one wins";
    - `+optimizer=X` / `+scheduler=X` select the group option (the group is in the
      defaults list, see BLOCK_GROUPS);
    - an entry of a per-column map (`model_spec.feature_embedding_dims.itemId=32`) is set
      whether or not the key exists yet (`++`), so maps need no `+` bookkeeping, and a
      whole map (`training_spec.class_weights={itemId: [...]}`) replaces the YAML's;
    - unknown keys are reported with a suggestion.
    """
    out = []
    problems = []
    given: Dict[str, Tuple[str, str]] = {}  # full key -> (as written, value)
    for arg in args:
        m = _OVERRIDE.match(arg)
        is_override = m is not None and not arg.startswith("-") and ("=" in arg or m.group("prefix") == "~")
        if not is_override:  # flags (-m, --cfg job) and their values
            out.append(arg)
            continue
        prefix, key = m.group("prefix") or "", full_key(m.group("key"))
        parts = key.split(".")
        problems.extend(_conflicting_alias(given, m.group("key"), key, m.group("rest")))
        if key in BLOCK_GROUPS and prefix == "+":
            prefix = ""
        # Hydra's own keys and group choices (+model_spec=gqa) are Hydra's to check; a path
        # into model_spec/training_spec is a schema field like any other.
        into_section = len(parts) > 1 and parts[0] in ("model_spec", "training_spec")
        if into_section or parts[0] not in ("hydra",) + CONFIG_GROUPS:
            found = _override_key_problems(command, key)
            problems.extend(found)
            if not found and prefix != "~" and _addresses_map(command, key.split(".")):
                prefix = "++"
        out.append(f"{prefix}{key}{m.group('rest')}")
    problems.extend(_block_given_twice(out))
    if problems:
        raise SequifierError("\n".join(problems))
    return out


def _conflicting_alias(given: Dict[str, Tuple[str, str]], written: str, key: str, rest: str) -> List[str]:
    """One line when an alias and its full name are both given with different values."""
    value = rest[1:]
    if key in given and given[key][0] != written and given[key][1] != value:
        first, first_value = given[key]
        return [f"{first} ({first_value}) and {written} ({value}) disagree on the command line; "
                f"they name the same field {key}: give only one"]
    given[key] = (written, value)
    return []


def _block_given_twice(overrides: List[str]) -> List[str]:
    """A preset and a whole block for the same optimizer/scheduler: which one is meant?"""
    keys = {m.group("key"): m.group("prefix") for m in map(_OVERRIDE.match, overrides) if m}
    problems = []
    for group, (section, field) in BLOCK_GROUPS.items():
        path = f"{section}.{field}"
        if group in keys and path in keys and keys[path] != "~":
            problems.append(f"{path}: given as a whole and as the preset {group}=...; give one of them "
                            f"(add single arguments to a preset with {path}.KEY=VALUE)")
    return problems


def _override_key_problems(command: str, key: str) -> List[str]:
    schema = SCHEMAS[command]
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = _schema_fields(schema)
        if part not in fields:
            where = ".".join(parts[: i + 1])
            return [f"{where}: unknown field in command-line override '{key}'{_did_you_mean(part, fields)}"]
        sub = _nested_schema(schema, part)
        if sub is None:
            return []  # a leaf or a free-form dict (optimizer, criterion ...)
        schema = sub
    return []


def _is_map_type(annotation) -> bool:
    """Dict[...] or Optional[Dict[...]]."""
    if typing.get_origin(annotation) is typing.Union:
        return any(_is_map_type(a) for a in typing.get_args(annotation) if a is not type(None))
    return annotation is dict or typing.get_origin(annotation) is dict


def map_field_path(command: str, parts: Sequence[str]) -> bool:
    """Whether `parts` names a map field of the schema (criterion, class_weights, optimizer ...)."""
    schema = SCHEMAS[command]
    for i, part in enumerate(parts):
        fields = _schema_fields(schema)
        if part not in fields:
            return False
        if i == len(parts) - 1:
            return _is_map_type(fields[part].type)
        schema = _nested_schema(schema, part)
        if schema is None:
            return False
    return False


def _addresses_map(command: str, parts: Sequence[str]) -> bool:
    """A whole map field, or one entry of it."""
    return map_field_path(command, parts) or (len(parts) > 1 and map_field_path(command, parts[:-1]))


def _prepare_maps(command: str, user_config: Dict[str, Any], overrides: Sequence[str]) -> None:
    """Shape the YAML's maps for the command line's map overrides, in place.

    An entry override (`training_spec.class_weights.itemId=[...]`) needs a mapping to put
    the entry into: a map that is null (the templates' `class_weights: null`) or absent
    becomes an empty one. A whole-map override (`training_spec.class_weights={...}`)
    gives the whole map: Hydra would merge it into the YAML's map and keep entries the
    user replaced, so the YAML's map is emptied first.
    """
    for arg in overrides:
        m = _OVERRIDE.match(arg)
        if m is None or m.group("prefix") == "~" or not m.group("rest"):
            continue
        parts = m.group("key").split(".")
        whole = map_field_path(command, parts)
        if not whole and not (len(parts) > 1 and map_field_path(command, parts[:-1])):
            continue
        map_parts = parts if whole else parts[:-1]
        node = user_config
        for part in map_parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if whole or node.get(map_parts[-1]) is None:
            node[map_parts[-1]] = {}


def register_configs(command: str, user_config: Dict[str, Any], overrides: Sequence[str] = ()) -> None:
    """Put the schema and the user's YAML into Hydra's ConfigStore.

    `overrides` are the rewritten command-line overrides (see `_prepare_maps`). For train,
    the YAML's optimizer and scheduler blocks become the `from_yaml` options of their
    groups, so that a preset replaces them (BLOCK_GROUPS).
    """
    user_config = copy.deepcopy(user_config)
    _prepare_maps(command, user_config, overrides)
    cs = ConfigStore.instance()
    cs.store(name=f"{command}_schema", node=SCHEMAS[command])
    if command == "train":
        for group, (section, key) in BLOCK_GROUPS.items():
            block = (user_config.get(section) or {}).pop(key, None) or {}
            cs.store(group=group, name=FROM_YAML, node=OmegaConf.create(block), package=f"{section}.{key}")
    cs.store(group="user_config", name=command, node=OmegaConf.create(user_config),
             package="_global_")


def on_schema(schema, node: Dict[str, Any]):
    """`node` (plain values) merged over `schema`'s defaults, as the schema's dataclass.

    The last step of every composition: the CLI's (`to_dataclass`) and the rebuilding of a
    model from a checkpoint's recorded config or a training YAML (infer's torch runner).
    """
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))


def to_dataclass(command: str, cfg: DictConfig):
    """The composed config as its schema dataclass.

    Aliases are already folded where the user wrote them (`load_user_config` for the YAML,
    `rewrite_overrides` for the command line). A mandatory field still unset fails here
    with Hydra's wording, naming the field.
    """
    try:
        return on_schema(SCHEMAS[command], OmegaConf.to_container(cfg, resolve=True))
    except MissingMandatoryValue as e:
        key = e.full_key
        raise SequifierError(
            f"Missing mandatory value: {key}; set it in your {command}.yaml or on the command "
            f"line as {key}=VALUE"
        ) from None
