"""Named things, one way: :class:`Registry` for classes and factories, :func:`choice` for plain values.

Every kind of named thing (attacks, models, datasets, regularisers, weight perturbations, objectives, schedules,
training procedures, remedies, monitor rules, AutoAttack backends) is a :class:`Registry` at its package; each entry
is registered at its definition with ``@REGISTRY.register`` (under its ``name`` attribute, or a name given to the
decorator). A registry checks a name and its options before anything is built: the options are the keyword-only
arguments of the entry's constructor (its own and its bases'), so a config section ``{name: ..., option: value}``
is checked against the code that will receive it.

The messages for an unknown name, an unknown value of a plain enumeration and an unknown key come from
:func:`robustrain.errors.unknown_choice` and :func:`robustrain.errors.unknown_key` and nowhere else: they say what
was received, list the choices, and add one "did you mean" when a choice is close.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, TypeVar, overload

from .errors import unknown_choice, unknown_key

T = TypeVar("T")

BEHAVIOURS = ("paper", "code")
"""The values of a method's ``behaviour`` switch (paper and official code train differently): a class that has the
switch takes a ``behaviour`` keyword argument and may narrow the choices with a ``behaviours`` attribute."""


# -- plain values -------------------------------------------------------------------------------------------
def choice(kind: str, value: Any, choices: Iterable[Any], where: str | None = None, note: str = "") -> Any:
    """``value`` if it is one of ``choices``, else the :func:`unknown_choice` error (a plain enumeration such as
    ``threat.norm``, ``monitor.action`` or ``optim.name``)."""
    choices = list(choices)
    if value not in choices:
        raise unknown_choice(kind, value, choices, where, note)
    return value


# -- options ------------------------------------------------------------------------------------------------
def keyword_arguments(cls: Any) -> dict[str, inspect.Parameter]:
    """Keyword-only arguments of a class's constructors (its own and its bases', in definition order), or of a
    function."""
    if not isinstance(cls, type):
        return {p.name: p for p in inspect.signature(cls).parameters.values() if p.kind is p.KEYWORD_ONLY}
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in params:
                params[p.name] = p
    return params


def takes_number(param: inspect.Parameter) -> bool:
    """Whether an argument is annotated as a float (so "8/255" in a config is parsed as a fraction)."""
    return "float" in str(param.annotation)


class Registry(Mapping[str, T], Generic[T]):
    """Name → class (or factory) of one ``kind``, filled by ``@registry.register`` at each definition.

    Args:
        kind: what the entries are, for messages ("attack", "monitor rule").
        key: the attribute an entry is registered under when the decorator gets no name (``name``; the remedies
            use ``kind``), also the key of the name in a config section. Entries without it (functions) are
            registered under their ``__name__``.
        base: entries must be subclasses of this class.
        options: an entry's options, name → parameter (default :func:`keyword_arguments`).
        validate: called with (name, entry) before registering; raises for an entry that cannot work.

    Reading: ``name in registry``, ``registry[name]`` / :meth:`get` (an unknown name raises the
    :func:`unknown_choice` error, the choices sorted), iteration and :meth:`names` in registration order.
    """

    def __init__(self, kind: str, *, key: str = "name", base: type | None = None,
                 options: Callable[[Any], Mapping[str, inspect.Parameter]] = keyword_arguments,
                 validate: Callable[[str, Any], None] | None = None):
        self.kind, self.key, self.base = kind, key, base
        self._options, self._validate = options, validate
        self._entries: dict[str, T] = {}

    # -- registering --------------------------------------------------------------------------------------
    @overload
    def register(self, entry: str | None = None, *, name: str | None = None) -> Callable[[T], T]: ...

    @overload
    def register(self, entry: T, *, name: str | None = None) -> T: ...

    def register(self, entry: Any = None, *, name: str | None = None) -> Any:
        """Register ``entry`` (a decorator: ``@R.register``, ``@R.register("pgd")`` or ``@R.register(name=...)``);
        returns it unchanged. A name already taken is refused."""
        if entry is None or isinstance(entry, str):
            given = entry if isinstance(entry, str) else name
            return lambda obj: self.register(obj, name=given)
        if name is None:
            attr = getattr(entry, self.key, None)
            name = attr if isinstance(attr, str) else getattr(entry, "__name__", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} registry: {entry!r} has no {self.key!r}; give one, "
                            f"@register(\"my_{self.kind.split()[-1]}\").")
        if self.base is not None and not (isinstance(entry, type) and issubclass(entry, self.base)):
            raise TypeError(f"{self.kind} {name!r}: {entry!r} is not a {self.base.__name__} subclass.")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice ({_where(self._entries[name])} and "
                             f"{_where(entry)}); rename one of them.")
        if self._validate is not None:
            self._validate(name, entry)
        self._entries[name] = entry
        return entry

    # -- reading ------------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise unknown_choice(self.kind, name, sorted(self._entries)) from None

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        """The entry ``name``; an unknown name raises with the choices unless a ``default`` is given."""
        if default is not None and name not in self:
            return default
        return self[name]

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:  # unhashable
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def options(self, name: str, hidden: Iterable[str] = ()) -> dict[str, inspect.Parameter]:
        """The options entry ``name`` accepts (name → parameter), less ``hidden`` ones."""
        hidden = set(hidden)
        return {k: p for k, p in self._options(self[name]).items() if k not in hidden}

    # -- checking and building ----------------------------------------------------------------------------
    def check(self, name: Any, options: Iterable[str] = (), where: str | None = None,
              hidden: Iterable[str] = ()) -> dict[str, inspect.Parameter]:
        """Raise for an unknown ``name`` or an option the entry does not take; return the accepted options.
        ``where`` is the config section the name and options come from (``"attack"``, ``"regularisers[0]"``)."""
        if name not in self:
            raise unknown_choice(self.kind, name, sorted(self._entries), f"{where}.{self.key}" if where else None)
        params = self.options(name, hidden)
        for key in options:
            if key not in params:
                valid = [self.key, *params] if where else list(params)
                raise unknown_key(key, valid, where, owner=f"{self.kind} {name!r}")
        return params

    def build(self, name: str, *args: Any, **options: Any) -> Any:
        """A fresh ``registry[name](*args, **options)`` after :meth:`check`."""
        self.check(name, options)
        return self._entries[name](*args, **options)  # type: ignore[operator]


def import_modules(package: str, path: Iterable[str]) -> None:
    """Import every module of ``package`` (its ``__path__``) whose name does not start with ``_``, so that a file
    that registers an entry at its definition is the whole change (call at the end of the package's __init__)."""
    for info in pkgutil.iter_modules(path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def _where(entry: Any) -> str:
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', repr(entry))}"


def import_callable(spec: str, where: str, example: str) -> Any:
    """The callable ``module:attribute`` names (``attribute`` may be dotted), imported and never evaluated; the
    current folder is importable. ``where`` names the setting in errors (``--model``, ``data.name =``), ``example``
    is shown when ``spec`` is malformed."""
    import sys
    from pathlib import Path

    from .errors import ConfigError

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{where} {spec!r}: expected module:function, e.g. {example}.")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{where} {spec!r}: cannot import {module_name!r} ({e}); run from the folder that holds it "
                          "or install it.") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{where} {spec!r}: {module_name!r} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{where} {spec!r}: {attr!r} is not callable.")
    return obj
