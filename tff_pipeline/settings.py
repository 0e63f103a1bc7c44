"""Declaring each setting once: its flag, default, help text and checks.

A user-settable field of a config dataclass is declared with `setting(...)`;
the declaration sits in the field's metadata. Everything else reads it:

  * the dataclass validates itself at construction with `check_fields`,
    which reports the first bad value as a one-line `errors.UsageError`
    naming its flag (`--clip_norm=-1.0 must be >= 0 ...`);
  * `experiments/common_flags.py` defines one absl flag per setting, with
    its type (from the field's annotation), default and help text;
  * `hparams.csv` and `docs/flags.md` list the same flags.

Nested config blocks (the optimizers, the aggregation settings...) are
fields declared with `nested(...)`; `walk` visits their settings in field
order. `{role}` / `{Role}` in a flag name or help text is replaced by the
block's `role` field ('client' / 'Client' for the client optimizer), and
`{choices}` in a help text by the help of the registry that lists the valid
values.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from tff_pipeline import errors
from tff_pipeline import registry as registry_lib

_SETTING = 'tff_pipeline.setting'
_NESTED = 'tff_pipeline.nested'
_INTERNAL = 'tff_pipeline.internal'


class _Unset:
  """No flag default given: the flag takes the field's default."""

  def __repr__(self) -> str:
    return 'UNSET'


UNSET: Any = _Unset()

# A flag kind for each field annotation (the modules use
# `from __future__ import annotations`, so annotations are strings).
_KINDS = {'bool': 'bool', 'int': 'integer', 'float': 'float', 'str': 'string',
          'str | None': 'string', 'tuple[str, ...]': 'list',
          'tuple[float, ...]': 'list'}


def finite(value: Any) -> bool:
  """math.isfinite, but False for ints too large for a float (10**400) and
  for values that are not numbers."""
  try:
    return math.isfinite(value)
  except (OverflowError, TypeError):
    return False


@dataclasses.dataclass(frozen=True)
class Check:
  """One condition on a value, and what the error says when it fails.

  Attributes:
    ok: True for a good value.
    expected: The end of the error message, e.g. 'must be positive'.
    show: How the bad value is written after `--flag=` (e.g. `repr`).
  """

  ok: Callable[[Any], bool]
  expected: str
  show: Callable[[Any], str] = str


POSITIVE = Check(lambda v: v >= 1, 'must be positive')
POSITIVE_FINITE = Check(
    lambda v: isinstance(v, (int, float)) and finite(v) and v > 0,
    'must be a positive finite number')


def at_least(low: float, expected: str | None = None) -> Check:
  """A finite value >= low."""
  return Check(lambda v: finite(v) and v >= low,
               expected or f'must be >= {low:g}')


def fraction(expected: str = 'must be in [0, 1]') -> Check:
  return Check(lambda v: 0.0 <= v <= 1.0, expected)


@dataclasses.dataclass(frozen=True)
class Setting:
  """The declaration of one setting (see `setting`)."""

  help: str
  flag: str | None = None
  checks: tuple[Check, ...] = ()
  choices: Sequence[str] | registry_lib.Registry | str | None = None
  flag_default: Any = UNSET
  kind: str | None = None


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,  # pylint: disable=redefined-builtin
    flag: str | None = None,
    checks: Sequence[Check] = (),
    choices: Sequence[str] | registry_lib.Registry | str | None = None,
    flag_default: Any = UNSET,
    kind: str | None = None,
) -> Any:
  """A dataclass field that is a user setting with a command-line flag.

  Args:
    default: The field's default; none makes the field required.
    help: The flag's help text (also the meaning in docs/flags.md).
    flag: The flag's name, if not the field's; may contain `{role}`.
    checks: Conditions the value must meet, checked at construction in this
      order.
    choices: The valid values: a tuple (checked at construction), a
      `registry.Registry` (checked with its `get`), or 'module:NAME' naming
      a registry in a module that imports this one (only the flag offers
      its names; the registry checks the value when the library builds
      from it).
    flag_default: The flag's default when it differs from `default` or the
      field has none.
    kind: The absl flag kind ('string', 'integer', 'float', 'bool', 'list',
      'enum'), if the annotation does not tell.

  Returns:
    A `dataclasses.field`.
  """
  metadata = {_SETTING: Setting(help=help, flag=flag, checks=tuple(checks),
                                choices=choices, flag_default=flag_default,
                                kind=kind)}
  return dataclasses.field(default=default, metadata=metadata)


def nested(default: Any, *, spread_in_hparams: bool = False) -> Any:
  """A field holding a config block whose own fields are settings.

  Args:
    default: The block's default instance (frozen, so it can be shared).
    spread_in_hparams: In the `hparams.csv` of a run started from Python,
      one column per flag of the block (the optimizers); otherwise one
      column, named after the field, holding the block's repr. Both shapes
      are those of the first releases, kept so that resumed runs compare
      their hyperparameters equal.
  """
  return dataclasses.field(default=default,
                           metadata={_NESTED: spread_in_hparams})


def internal(default: Any, why: str) -> Any:
  """A field that is not a user setting (it has no flag), and why."""
  return dataclasses.field(default=default, metadata={_INTERNAL: why})


def setting_of(field: dataclasses.Field) -> Setting | None:
  return field.metadata.get(_SETTING)


def is_nested(field: dataclasses.Field) -> bool:
  return _NESTED in field.metadata


def is_internal(field: dataclasses.Field) -> bool:
  return _INTERNAL in field.metadata


def _role_of(config: Any) -> str:
  return getattr(config, 'role', '') or ''


def _with_role(text: str, role: str) -> str:
  return text.replace('{role}', role).replace('{Role}', role.capitalize())


def flag_name(field: dataclasses.Field, role: str = '') -> str:
  s = setting_of(field)
  return _with_role((s.flag if s and s.flag else field.name), role)


def resolve_choices(
    choices: Sequence[str] | registry_lib.Registry | str | None,
) -> Sequence[str] | registry_lib.Registry | None:
  """The registry named by a 'module:NAME' reference; others unchanged."""
  if isinstance(choices, str):
    module, name = choices.split(':')
    return getattr(importlib.import_module(module), name)
  return choices


@dataclasses.dataclass(frozen=True)
class Declared:
  """A setting as the command line sees it.

  Attributes:
    flag: The flag's name.
    setting: The declaration.
    path: Field names from the walked config down to the setting, e.g.
      ('client_optimizer', 'learning_rate').
    default: The flag's default (before per-binary overrides).
    kind: The absl flag kind: string, integer, float, bool, list or enum.
    role: The block's role ('client'...), '' outside role blocks.
  """

  flag: str
  setting: Setting
  path: tuple[str, ...]
  default: Any
  kind: str
  role: str

  @property
  def help(self) -> str:
    text = _with_role(self.setting.help, self.role)
    if '{choices}' in text:
      choices = resolve_choices(self.setting.choices)
      text = text.replace('{choices}', choices.help_text())
    return text

  def choices(self) -> list[str] | None:
    choices = resolve_choices(self.setting.choices)
    if choices is None:
      return None
    if isinstance(choices, registry_lib.Registry):
      return choices.names()
    return list(choices)


def _kind(field: dataclasses.Field, s: Setting) -> str:
  if s.kind:
    return s.kind
  if s.choices is not None:
    return 'enum'
  try:
    return _KINDS[field.type if isinstance(field.type, str)
                  else field.type.__name__]
  except (KeyError, AttributeError):
    raise TypeError(f'setting {field.name}: give the flag kind of type '
                    f'{field.type!r}') from None


def _flag_default(field: dataclasses.Field, s: Setting, value: Any) -> Any:
  if s.flag_default is not UNSET:
    return s.flag_default
  if isinstance(value, tuple):
    return list(value)
  return value


def walk(config: Any, path: tuple[str, ...] = ()) -> Iterator[Declared]:
  """The settings of a config class or instance, nested blocks included, in
  field order; defaults are the instance's values (the class's defaults for
  a class)."""
  role = _role_of(config)
  for field in dataclasses.fields(config):
    if is_nested(field):
      block = (getattr(config, field.name) if not isinstance(config, type)
               else field.default)
      yield from walk(block, path + (field.name,))
      continue
    s = setting_of(field)
    if s is None:
      continue
    value = (field.default if isinstance(config, type)
             else getattr(config, field.name))
    yield Declared(flag=flag_name(field, role), setting=s,
                   path=path + (field.name,),
                   default=_flag_default(field, s, value),
                   kind=_kind(field, s), role=role)


def from_flags(config_type: type, values: Mapping[str, Any],
               template: Any = None, **fixed: Any) -> Any:
  """Builds `config_type` from flag values (by flag name), recursively.

  Args:
    config_type: The config dataclass.
    values: Flag values by flag name; settings whose flag is missing keep
      their default.
    template: An instance whose internal fields (such as `role`) and whose
      nested blocks' internal fields are kept.
    **fixed: Field values that do not come from flags.
  """
  role = _role_of(template)
  kwargs: dict[str, Any] = {}
  for field in dataclasses.fields(config_type):
    if field.name in fixed:
      continue
    if is_nested(field):
      block = (getattr(template, field.name) if template is not None
               else field.default)
      kwargs[field.name] = from_flags(type(block), values, block)
    elif setting_of(field) is not None:
      flag = flag_name(field, role)
      if flag in values:
        value = values[flag]
        kwargs[field.name] = tuple(value) if isinstance(value, list) else value
    elif template is not None and is_internal(field):
      kwargs[field.name] = getattr(template, field.name)
  return config_type(**kwargs, **fixed)


def hparams(config: Any) -> dict[str, Any]:
  """One hparams.csv column per field of `config` (see `nested`)."""
  flat: dict[str, Any] = {}
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if field.metadata.get(_NESTED):
      for declared in walk(value):
        flat[declared.flag] = _path_value(value, declared.path)
    elif not is_internal(field):
      flat[field.name] = value
  return flat


def _path_value(config: Any, path: Sequence[str]) -> Any:
  for name in path:
    config = getattr(config, name)
  return config


def check_fields(config: Any) -> None:
  """Raises `errors.UsageError` naming the flag of the first bad setting.

  Checks the config's own settings, in field order; nested blocks checked
  themselves when they were built.
  """
  role = _role_of(config)
  for field in dataclasses.fields(config):
    s = setting_of(field)
    if s is None:
      continue
    value = getattr(config, field.name)
    flag = flag_name(field, role)
    for check in s.checks:
      if not check.ok(value):
        raise errors.UsageError(f'--{flag}={check.show(value)} '
                                f'{check.expected}')
    if isinstance(s.choices, registry_lib.Registry):
      s.choices.get(value, flag=f'--{flag}')
    elif s.choices is not None and not isinstance(s.choices, str):
      if value not in s.choices:
        raise errors.UsageError(
            f'--{flag}={value!r} must be one of {", ".join(s.choices)}')


class Validated:
  """Base of the config dataclasses: `validate` runs at construction.

  The default `validate` checks each declared setting (`check_fields`); a
  config with rules across its fields overrides it and calls
  `check_fields` first.
  """

  def __post_init__(self) -> None:
    self.validate()

  def validate(self) -> None:
    check_fields(self)
