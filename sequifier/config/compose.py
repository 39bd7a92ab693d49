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

import dataclasses
import difflib
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from sequifier.config.schema import SCHEMAS
from sequifier.errors import SequifierError

CONFIG_GROUPS = ("model_spec", "training_spec", "attention", "optimizer", "scheduler",
                 "hparams_search", "user_config")
# Short names accepted for a field, in YAML and on the command line.
ALIASES = {("training_spec", "lr"): ("training_spec", "learning_rate")}
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
        default = os.path.join("configs", f"{command}.yaml")
        return default if os.path.isfile(default) else None
    if path is not None and os.path.isfile(path):
        candidate = path
    elif path is not None and os.path.isdir(path):
        candidate = os.path.join(path, with_ext(name or command))
    elif path is not None and (path.endswith((".yaml", ".yml")) or name is None):
        candidate = path
    else:
        candidate = os.path.join(path or "configs", with_ext(name))
    if not os.path.isfile(candidate):
        raise SequifierError(
            f"config file '{candidate}' not found; pass --config-path with the path to your "
            f"{command}.yaml (e.g. configs/{command}.yaml) or run `sequifier make NAME` for templates"
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
    """Map alias keys to their full names and reject unknown keys, before Hydra sees them."""
    out = []
    problems = []
    for arg in args:
        m = _OVERRIDE.match(arg)
        is_override = m is not None and not arg.startswith("-") and ("=" in arg or m.group("prefix") == "~")
        if not is_override:  # flags (-m, --cfg job) and their values
            out.append(arg)
            continue
        key = m.group("key")
        parts = key.split(".")
        if len(parts) == 2 and tuple(parts) in ALIASES:
            key = ".".join(ALIASES[tuple(parts)])
        # Hydra's own keys and group choices (+model_spec=gqa) are Hydra's to check; a path
        # into model_spec/training_spec is a schema field like any other.
        into_section = len(parts) > 1 and parts[0] in ("model_spec", "training_spec")
        if into_section or parts[0] not in ("hydra",) + CONFIG_GROUPS:
            problems.extend(_override_key_problems(command, key))
        out.append(f"{m.group('prefix') or ''}{key}{m.group('rest')}")
    if problems:
        raise SequifierError("\n".join(problems))
    return out


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


def register_configs(command: str, user_config: Dict[str, Any]) -> None:
    """Put the schema and the user's YAML into Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    cs.store(name=f"{command}_schema", node=SCHEMAS[command])
    cs.store(group="user_config", name=command, node=OmegaConf.create(user_config),
             package="_global_")


def to_dataclass(command: str, cfg: DictConfig):
    """The composed config as its schema dataclass, aliases folded.

    A mandatory field still unset fails here with Hydra's wording, naming the field.
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    fold_aliases(container, "the composed config")
    merged = OmegaConf.merge(OmegaConf.structured(SCHEMAS[command]), container)
    try:
        return OmegaConf.to_object(merged)
    except MissingMandatoryValue as e:
        key = e.full_key
        raise SequifierError(
            f"Missing mandatory value: {key}; set it in your {command}.yaml or on the command "
            f"line as {key}=VALUE"
        ) from None
