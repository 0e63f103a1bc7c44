"""A small name -> builder registry.

Registries replace `if/elif` chains over flag values: the binaries offer
`registry.names()` as the allowed flag values, and the library resolves a
name with `registry.get(name)`, which fails with a message listing the valid
names.
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from tff_pipeline import errors

T = TypeVar('T')


class Registry(Generic[T]):
  """Maps names to builders of one kind (models, partitions, algorithms...).

  Args:
    kind: What is registered, used in error messages, e.g. 'partition'.
    flag: The command-line flag that selects an entry, e.g. '--partition'.
    sort_names: List the names sorted; otherwise in registration order.
  """

  def __init__(self, kind: str, flag: str, sort_names: bool = True):
    self.kind = kind
    self.flag = flag
    self._sort_names = sort_names
    self._entries: dict[str, T] = {}
    self._help: dict[str, str] = {}
    self._tags: dict[str, tuple[str, ...]] = {}

  def register(self, name: str, help_text: str = '',
               tags: Sequence[str] = ()) -> Callable[[T], T]:
    """Decorator that registers `builder` under `name`.

    Args:
      name: The name users select the entry by.
      help_text: One line for `--help`.
      tags: Groups the entry belongs to, for `subset` (e.g. the models of
        one task).
    """

    def decorator(builder: T) -> T:
      if name in self._entries:
        raise ValueError(f'{self.kind} {name!r} is registered twice')
      self._entries[name] = builder
      self._help[name] = help_text
      self._tags[name] = tuple(tags)
      return builder

    return decorator

  def subset(self, tag: str) -> 'Registry[T]':
    """The entries registered with `tag`, listed in registration order."""
    subset: Registry[T] = Registry(self.kind, self.flag, sort_names=False)
    for name, builder in self._entries.items():
      if tag in self._tags[name]:
        subset.register(name, self._help[name], self._tags[name])(builder)
    return subset

  def get(self, name: str, flag: str | None = None) -> T:
    """Returns the builder for `name`, or raises `errors.UsageError`.

    Args:
      name: The registered name.
      flag: The flag to name in the error message, if not `self.flag`.
    """
    try:
      return self._entries[name]
    except KeyError:
      raise errors.UsageError(
          f'{flag or self.flag}={name!r} is not a known {self.kind}; valid '
          'names are: '
          f'{", ".join(self.names())}'
      ) from None

  def names(self) -> list[str]:
    if self._sort_names:
      return sorted(self._entries)
    return list(self._entries)

  def help_text(self) -> str:
    """One line per entry, for `--help`."""
    return '; '.join(
        f'{name}: {self._help[name]}' if self._help[name] else name
        for name in self.names()
    )

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())
