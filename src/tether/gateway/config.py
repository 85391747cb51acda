"""The gateway's configuration: one YAML file, validated whole before anything starts.

Rule: every mistake is reported, with its key path and line, all at once: a file with five
mistakes gives five lines, not one per attempt. `tether gateway --check FILE` does only that.

Durations are strings with a unit: `250ms`, `1.5s`, `2m`. Sizes are whole numbers of bytes.
See docs/gateway.md for every key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml

from tether._settings import parse_duration
from tether.gateway.retries import RetrySettings

_T = TypeVar("_T")

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_VERSION = re.compile(r"v[0-9]{1,6}")


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: Address
    zone: str


@dataclass(frozen=True, slots=True)
class DeadlineSettings:
    default: float = 3.0
    max: float = 30.0
    margin: float = 0.005


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    versions: tuple[str, ...]
    endpoints: tuple[Endpoint, ...]
    strip_prefix: bool = True
    retry_with_idempotency_key: bool = False
    deadline: DeadlineSettings | None = None  # None: the gateway's own `deadline` settings


@dataclass(frozen=True, slots=True)
class Policy:
    connect: float
    read: float
    retries: int


@dataclass(frozen=True, slots=True)
class Conventions:
    request_id: str = "require"  # require | generate
    app_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_header_bytes: int = 16384
    max_body_bytes: int = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class JwtAuth:
    """Bearer-token verification: HS256 with a secret from an environment variable, or
    RS256/ES256 with a public key file or a JWKS file."""

    algorithms: tuple[str, ...]
    secret_env: str | None = None
    public_key_file: str | None = None
    jwks_file: str | None = None
    issuer: str | None = None
    audience: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    listen: Address
    admin_listen: Address
    zone: str
    deadline: DeadlineSettings
    conventions: Conventions
    limits: Limits
    same_zone: Policy
    cross_zone: Policy
    services: dict[str, Service] = field(default_factory=dict)
    auth: JwtAuth | None = None
    retry: RetrySettings = field(default_factory=RetrySettings)
    access_log: bool = True
    metrics: bool = True
    source: str = "<config>"


@dataclass(frozen=True, slots=True)
class Mistake:
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.path}: {self.message}"


class ConfigError(ValueError):
    """The configuration has mistakes; `mistakes` lists every one."""

    def __init__(self, source: str, mistakes: list[Mistake]) -> None:
        self.source = source
        self.mistakes = mistakes
        lines = "\n".join(f"  {m}" for m in mistakes)
        count = f"{len(mistakes)} mistake{'s' if len(mistakes) != 1 else ''}"
        super().__init__(f"{source}: {count}:\n{lines}")


def load(path: str | Path) -> Config:
    """Read and validate a configuration file; ConfigError lists every mistake."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [Mistake("(file)", None, f"cannot be read: {exc}")]) from None
    return parse(text, source)


def parse(text: str, source: str = "<config>") -> Config:
    """Validate configuration text; ConfigError lists every mistake."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(source, [Mistake("(file)", line, f"not valid YAML: {exc}")]) from None
    reader = _Reader()
    config = reader.config(root, source)
    if reader.mistakes or config is None:
        raise ConfigError(source, reader.mistakes)
    return config


_TOP = {
    "listen",
    "admin",
    "zone",
    "deadline",
    "conventions",
    "limits",
    "policies",
    "services",
    "auth",
    "retry",
    "observability",
}


class _Reader:
    """Walks the YAML node tree, collecting every mistake instead of stopping at the first."""

    def __init__(self) -> None:
        self.mistakes: list[Mistake] = []

    def fail(self, path: str, node: yaml.Node | None, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        self.mistakes.append(Mistake(path, line, message))

    # -- shapes -------------------------------------------------------------------------

    def mapping(
        self, node: yaml.Node | None, path: str, allowed: set[str]
    ) -> dict[str, yaml.Node] | None:
        if node is None:
            return None
        if not isinstance(node, yaml.MappingNode):
            self.fail(path, node, "must be a mapping of keys to values")
            return None
        items: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.fail(path, key_node, "keys must be plain names")
                continue
            if key in items:
                self.fail(_join(path, key), key_node, "given twice")
                continue
            if allowed and key not in allowed:
                expected = ", ".join(sorted(allowed))
                self.fail(_join(path, key), key_node, f"unknown key; expected one of: {expected}")
                continue
            items[key] = value_node
        return items

    def scalar(self, node: yaml.Node | None, path: str) -> str | None:
        if node is None:
            return None
        if not isinstance(node, yaml.ScalarNode):
            self.fail(path, node, "must be a single value")
            return None
        return str(node.value)

    def required(
        self, items: dict[str, yaml.Node], key: str, path: str, parent: yaml.Node | None
    ) -> yaml.Node | None:
        node = items.get(key)
        if node is None:
            self.fail(_join(path, key), parent, "is required")
        return node

    def typed(
        self, node: yaml.Node | None, path: str, convert: Callable[[str], _T], what: str
    ) -> _T | None:
        text = self.scalar(node, path)
        if text is None:
            return None
        try:
            return convert(text)
        except ValueError as exc:
            self.fail(path, node, f"{what}: {exc}")
            return None

    def duration(self, node: yaml.Node | None, path: str, *, positive: bool = True) -> float | None:
        value = self.typed(node, path, parse_duration, "must be a duration")
        if value is not None and positive and value <= 0:
            self.fail(path, node, "must be longer than zero")
            return None
        return value

    def integer(self, node: yaml.Node | None, path: str, *, minimum: int) -> int | None:
        def convert(text: str) -> int:
            if not re.fullmatch(r"[0-9]{1,12}", text):
                raise ValueError(f"expected a whole number, got {text!r}")
            return int(text)

        value = self.typed(node, path, convert, "must be a whole number")
        if value is not None and value < minimum:
            self.fail(path, node, f"must be at least {minimum}")
            return None
        return value

    def boolean(self, node: yaml.Node | None, path: str) -> bool | None:
        text = self.scalar(node, path)
        if text is None:
            return None
        if text in ("true", "false"):
            return text == "true"
        self.fail(path, node, f"must be true or false, got {text!r}")
        return None

    def address(self, node: yaml.Node | None, path: str) -> Address | None:
        return self.typed(node, path, _address, "must be host:port")

    def name(self, node: yaml.Node | None, path: str, what: str) -> str | None:
        text = self.scalar(node, path)
        if text is not None and not _NAME.fullmatch(text):
            self.fail(path, node, f"{what} must be lowercase letters, digits and '-', got {text!r}")
            return None
        return text

    def sequence(self, node: yaml.Node | None, path: str) -> list[yaml.Node] | None:
        if node is None:
            return None
        if not isinstance(node, yaml.SequenceNode):
            self.fail(path, node, "must be a list")
            return None
        return list(node.value)

    # -- sections -----------------------------------------------------------------------

    def config(self, root: yaml.Node | None, source: str) -> Config | None:
        if root is None:
            self.fail("(file)", None, "is empty")
            return None
        top = self.mapping(root, "(file)", _TOP)
        if top is None:
            return None
        listen = self.address(self.required(top, "listen", "", root), "listen")
        admin = self.section(top, "admin", {"listen"})
        admin_listen = (
            self.address(admin.get("listen"), "admin.listen") if admin else None
        ) or Address("127.0.0.1", 9901)
        zone = self.name(self.required(top, "zone", "", root), "zone", "a zone")
        deadline = self.deadline(top.get("deadline"))
        conventions = self.conventions(top.get("conventions"))
        limits = self.limits(top.get("limits"))
        same_zone, cross_zone = self.policies(top.get("policies"))
        services = self.services(self.required(top, "services", "", root), zone or "", deadline)
        auth = self.auth(top.get("auth"))
        retry = self.retry(top.get("retry"))
        observability = self.section(top, "observability", {"access_log", "metrics"})
        access_log = self.boolean(observability.get("access_log"), "observability.access_log")
        metrics = self.boolean(observability.get("metrics"), "observability.metrics")
        if self.mistakes or listen is None or zone is None:
            return None
        return Config(
            listen=listen,
            admin_listen=admin_listen,
            zone=zone,
            deadline=deadline,
            conventions=conventions,
            limits=limits,
            same_zone=same_zone,
            cross_zone=cross_zone,
            services=services,
            auth=auth,
            retry=retry,
            access_log=_or(access_log, True),
            metrics=_or(metrics, True),
            source=source,
        )

    def section(
        self, top: dict[str, yaml.Node], key: str, allowed: set[str]
    ) -> dict[str, yaml.Node]:
        return self.mapping(top.get(key), key, allowed) or {}

    def deadline(
        self,
        node: yaml.Node | None,
        path: str = "deadline",
        gateway: DeadlineSettings | None = None,
    ) -> DeadlineSettings:
        """The gateway's `deadline` settings; or, given the `gateway`'s, a service's own
        (`default` and `max` only, each falling back to the gateway's; the margin is one)."""
        allowed = {"default", "max"} if gateway else {"default", "max", "margin"}
        items = self.mapping(node, path, allowed) or {}
        base = gateway or DeadlineSettings()
        default = self.duration(items.get("default"), f"{path}.default") or base.default
        maximum = self.duration(items.get("max"), f"{path}.max") or base.max
        margin = base.margin
        if "margin" in items:
            found = self.duration(items["margin"], "deadline.margin", positive=False)
            margin = found if found is not None else margin
        if default > maximum:
            max_path = f"{path}.max" if "max" in items else "deadline.max"  # which max applies
            self.fail(
                f"{path}.default",
                items.get("default") or node,
                f"({default:g} s) cannot be longer than {max_path} ({maximum:g} s)",
            )
        if margin >= default:
            if gateway:
                self.fail(
                    f"{path}.default",
                    items.get("default") or node,
                    f"must be longer than deadline.margin ({margin * 1000:g} ms)",
                )
            else:
                self.fail(
                    "deadline.margin",
                    items.get("margin") or node,
                    "must be shorter than deadline.default",
                )
        return DeadlineSettings(default=default, max=maximum, margin=margin)

    def conventions(self, node: yaml.Node | None) -> Conventions:
        items = self.mapping(node, "conventions", {"request_id", "app_ids"}) or {}
        request_id = self.scalar(items.get("request_id"), "conventions.request_id") or "require"
        if request_id not in ("require", "generate"):
            self.fail(
                "conventions.request_id",
                items.get("request_id"),
                f"must be require or generate, got {request_id!r}",
            )
        app_ids: list[str] = []
        for i, item in enumerate(self.sequence(items.get("app_ids"), "conventions.app_ids") or []):
            app = self.scalar(item, f"conventions.app_ids[{i}]")
            if app is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", app):
                self.fail(
                    f"conventions.app_ids[{i}]",
                    item,
                    "must be 1-64 letters, digits, '.', '_' or '-'",
                )
            elif app is not None:
                app_ids.append(app)
        return Conventions(request_id=request_id, app_ids=tuple(app_ids))

    def limits(self, node: yaml.Node | None) -> Limits:
        keys = {
            "header_timeout",
            "body_timeout",
            "idle_timeout",
            "max_header_bytes",
            "max_body_bytes",
        }
        items = self.mapping(node, "limits", keys) or {}
        base = Limits()
        return Limits(
            header_timeout=_or(
                self.duration(items.get("header_timeout"), "limits.header_timeout"),
                base.header_timeout,
            ),
            body_timeout=_or(
                self.duration(items.get("body_timeout"), "limits.body_timeout"), base.body_timeout
            ),
            idle_timeout=_or(
                self.duration(items.get("idle_timeout"), "limits.idle_timeout"), base.idle_timeout
            ),
            max_header_bytes=_or(
                self.integer(
                    items.get("max_header_bytes"), "limits.max_header_bytes", minimum=1024
                ),
                base.max_header_bytes,
            ),
            max_body_bytes=_or(
                self.integer(items.get("max_body_bytes"), "limits.max_body_bytes", minimum=0),
                base.max_body_bytes,
            ),
        )

    def retry(self, node: yaml.Node | None) -> RetrySettings:
        keys = {"backoff_base", "backoff_cap", "min_attempt", "body_buffer", "budget"}
        items = self.mapping(node, "retry", keys) or {}
        base = RetrySettings()
        budget = self.mapping(
            items.get("budget"), "retry.budget", {"ratio", "per_second", "window"}
        )
        budget = budget or {}
        settings = RetrySettings(
            backoff_base=_or(
                self.duration(items.get("backoff_base"), "retry.backoff_base"), base.backoff_base
            ),
            backoff_cap=_or(
                self.duration(items.get("backoff_cap"), "retry.backoff_cap"), base.backoff_cap
            ),
            min_attempt=_or(
                self.duration(items.get("min_attempt"), "retry.min_attempt"), base.min_attempt
            ),
            body_buffer=_or(
                self.integer(items.get("body_buffer"), "retry.body_buffer", minimum=0),
                base.body_buffer,
            ),
            budget_ratio=_or(
                self.number(budget.get("ratio"), "retry.budget.ratio", maximum=10.0),
                base.budget_ratio,
            ),
            budget_per_second=_or(
                self.number(budget.get("per_second"), "retry.budget.per_second", maximum=1e6),
                base.budget_per_second,
            ),
            budget_window=_or(
                self.duration(budget.get("window"), "retry.budget.window"), base.budget_window
            ),
        )
        if settings.backoff_base > settings.backoff_cap:
            self.fail(
                "retry.backoff_base",
                items.get("backoff_base") or node,
                "cannot be longer than retry.backoff_cap",
            )
        return settings

    def number(self, node: yaml.Node | None, path: str, *, maximum: float) -> float | None:
        def convert(text: str) -> float:
            if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,9})?", text):
                raise ValueError(f"expected a number like 0.2 or 10, got {text!r}")
            return float(text)

        value = self.typed(node, path, convert, "must be a number")
        if value is not None and value > maximum:
            self.fail(path, node, f"must be at most {maximum:g}")
            return None
        return value

    def policies(self, node: yaml.Node | None) -> tuple[Policy, Policy]:
        items = self.mapping(node, "policies", {"same_zone", "cross_zone"}) or {}
        same = self.policy(items.get("same_zone"), "policies.same_zone", Policy(0.3, 1.5, 1))
        cross = self.policy(items.get("cross_zone"), "policies.cross_zone", Policy(0.5, 3.0, 0))
        return same, cross

    def policy(self, node: yaml.Node | None, path: str, default: Policy) -> Policy:
        items = self.mapping(node, path, {"connect", "read", "retries"})
        if items is None:
            return default
        connect = self.duration(items.get("connect"), f"{path}.connect") or default.connect
        read = self.duration(items.get("read"), f"{path}.read") or default.read
        retries = default.retries
        if "retries" in items:
            found = self.integer(items["retries"], f"{path}.retries", minimum=0)
            retries = found if found is not None else retries
        return Policy(connect=connect, read=read, retries=retries)

    def services(
        self, node: yaml.Node | None, zone: str, deadline: DeadlineSettings
    ) -> dict[str, Service]:
        items = self.mapping(node, "services", set())
        if items is None:
            return {}
        if not items:
            self.fail("services", node, "declare at least one service")
        services = {}
        for name, service_node in items.items():
            path = f"services.{name}"
            if not _NAME.fullmatch(name):
                self.fail(
                    path, service_node, "a service name must be lowercase letters, digits and '-'"
                )
                continue
            service = self.service(service_node, path, name, zone, deadline)
            if service is not None:
                services[name] = service
        return services

    def service(
        self, node: yaml.Node, path: str, name: str, zone: str, deadline: DeadlineSettings
    ) -> Service | None:
        allowed = {
            "versions",
            "endpoints",
            "strip_prefix",
            "retry_with_idempotency_key",
            "deadline",
        }
        items = self.mapping(node, path, allowed)
        if items is None:
            return None
        versions: list[str] = []
        version_nodes = (
            self.sequence(self.required(items, "versions", path, node), f"{path}.versions") or []
        )
        for i, item in enumerate(version_nodes):
            version = self.scalar(item, f"{path}.versions[{i}]")
            if version is not None and not _VERSION.fullmatch(version):
                self.fail(
                    f"{path}.versions[{i}]",
                    item,
                    f"a version is 'v' and digits (v1, v2), got {version!r}",
                )
            elif version is not None:
                versions.append(version)
        if version_nodes == [] and "versions" in items:
            self.fail(f"{path}.versions", items["versions"], "list at least one version")
        endpoints = []
        endpoint_nodes = (
            self.sequence(self.required(items, "endpoints", path, node), f"{path}.endpoints") or []
        )
        if not endpoint_nodes and "endpoints" in items:
            self.fail(f"{path}.endpoints", items["endpoints"], "list at least one endpoint")
        for i, item in enumerate(endpoint_nodes):
            endpoint = self.endpoint(item, f"{path}.endpoints[{i}]", zone)
            if endpoint is not None:
                endpoints.append(endpoint)
        strip = self.boolean(items.get("strip_prefix"), f"{path}.strip_prefix")
        idempotent = self.boolean(
            items.get("retry_with_idempotency_key"), f"{path}.retry_with_idempotency_key"
        )
        own_deadline = None
        if "deadline" in items:
            own_deadline = self.deadline(items["deadline"], f"{path}.deadline", deadline)
        return Service(
            name=name,
            versions=tuple(versions),
            endpoints=tuple(endpoints),
            strip_prefix=True if strip is None else strip,
            retry_with_idempotency_key=bool(idempotent),
            deadline=own_deadline,
        )

    def endpoint(self, node: yaml.Node, path: str, zone: str) -> Endpoint | None:
        items = self.mapping(node, path, {"address", "zone"})
        if items is None:
            return None
        address = self.address(self.required(items, "address", path, node), f"{path}.address")
        endpoint_zone = self.name(items.get("zone"), f"{path}.zone", "a zone") or zone
        return Endpoint(address, endpoint_zone) if address is not None else None

    def auth(self, node: yaml.Node | None) -> JwtAuth | None:
        items = self.mapping(node, "auth", {"jwt"})
        if items is None:
            return None
        path = "auth.jwt"
        keys = {"algorithm", "secret_env", "public_key_file", "jwks_file", "issuer", "audience"}
        jwt = self.mapping(self.required(items, "jwt", "auth", node), path, keys)
        if jwt is None:
            return None
        algorithm = self.scalar(self.required(jwt, "algorithm", path, node), f"{path}.algorithm")
        secret_env = self.scalar(jwt.get("secret_env"), f"{path}.secret_env")
        public_key = self.scalar(jwt.get("public_key_file"), f"{path}.public_key_file")
        jwks = self.scalar(jwt.get("jwks_file"), f"{path}.jwks_file")
        if algorithm == "HS256" and secret_env is None:
            self.fail(
                f"{path}.secret_env",
                node,
                "HS256 needs secret_env (an environment variable holding the secret)",
            )
        elif algorithm in ("RS256", "ES256") and (public_key is None) == (jwks is None):
            self.fail(path, node, f"{algorithm} needs exactly one of public_key_file, jwks_file")
        elif algorithm is not None and algorithm not in ("HS256", "RS256", "ES256"):
            self.fail(
                f"{path}.algorithm",
                jwt.get("algorithm"),
                f"must be HS256, RS256 or ES256, got {algorithm!r}",
            )
        if algorithm is None:
            return None
        return JwtAuth(
            algorithms=(algorithm,),
            secret_env=secret_env,
            public_key_file=public_key,
            jwks_file=jwks,
            issuer=self.scalar(jwt.get("issuer"), f"{path}.issuer"),
            audience=self.scalar(jwt.get("audience"), f"{path}.audience"),
        )


def _join(path: str, key: str) -> str:
    """`path.key`, or just `key` at the top of the file."""
    return key if path in ("", "(file)") else f"{path}.{key}"


def _or(value: _T | None, default: _T) -> _T:
    """`value`, or `default` where the key was absent (or wrong: that is already a mistake)."""
    return default if value is None else value


def _address(text: str) -> Address:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([A-Za-z0-9.-]+):([0-9]{1,5})", text)
    if match is None:
        raise ValueError(f"expected host:port (or [v6]:port), got {text!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range 1-65535")
    return Address(host, port)
