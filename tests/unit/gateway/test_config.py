"""Gateway configuration: the documented example loads as written; mistakes are all reported."""

from __future__ import annotations

import pytest

from tether.gateway.config import Address, ConfigError, parse

EXAMPLE = """\
listen: 127.0.0.1:8080
admin:
  listen: 127.0.0.1:9901
zone: zone-a
deadline:
  default: 3s          # budget for requests that bring none
  max: 30s             # budgets that clients send are clamped to this
  margin: 5ms          # kept back at each hop for the answer's way home
conventions:
  request_id: require  # require | generate
  app_ids: [checkout-web, order-service]
limits:
  header_timeout: 10s
  body_timeout: 30s
  idle_timeout: 60s
  max_header_bytes: 16384
  max_body_bytes: 10485760
policies:
  same_zone:  {connect: 300ms, read: 1500ms, retries: 1}
  cross_zone: {connect: 500ms, read: 3s, retries: 0}
services:
  user:
    versions: [v1, v2]
    endpoints:
      - address: 127.0.0.1:9001
      - address: 127.0.0.1:9002
        zone: zone-b
  order:
    versions: [v1]
    endpoints:
      - address: 127.0.0.1:9101
"""


def test_the_documented_example_is_accepted_as_written() -> None:
    """The example file from the docs loads, with every value as written."""
    config = parse(EXAMPLE)
    assert config.listen == Address("127.0.0.1", 8080)
    assert config.admin_listen == Address("127.0.0.1", 9901)
    assert config.zone == "zone-a"
    assert (config.deadline.default, config.deadline.max, config.deadline.margin) == (3, 30, 0.005)
    assert config.conventions.request_id == "require"
    assert config.conventions.app_ids == ("checkout-web", "order-service")
    assert config.limits.max_body_bytes == 10485760
    assert config.same_zone.read == 1.5
    assert config.cross_zone.retries == 0
    user = config.services["user"]
    assert user.versions == ("v1", "v2")
    assert [e.zone for e in user.endpoints] == ["zone-a", "zone-b"]  # no zone: the gateway's
    assert user.strip_prefix
    assert not user.retry_with_idempotency_key


def test_every_mistake_is_reported_with_its_path_and_line() -> None:
    """A file with several mistakes reports all of them at once, each with key path and line."""
    text = """\
listen: localhost
zone: Zone A
deadline:
  default: 3
  max: 1s
limits:
  max_header_bytes: lots
  body_timeout: -5s
policies:
  same_zone: {connect: 300ms, read: 1500ms, retries: -1}
conventions:
  request_id: sometimes
services:
  user:
    versions: [1, v2]
    endpoints:
      - address: 127.0.0.1:99999
  Order:
    versions: [v1]
    endpoints: []
surprise: yes
"""
    with pytest.raises(ConfigError) as caught:
        parse(text, "gateway.yaml")
    found = {(m.path, m.line) for m in caught.value.mistakes}
    expected = {
        ("listen", 1),
        ("zone", 2),
        ("deadline.default", 4),
        ("limits.max_header_bytes", 7),
        ("limits.body_timeout", 8),
        ("policies.same_zone.retries", 10),
        ("conventions.request_id", 12),
        ("services.user.versions[0]", 15),
        ("services.user.endpoints[0].address", 17),
        ("services.Order", 19),
        ("surprise", 21),
    }
    assert expected <= found, sorted(found)
    message = str(caught.value)
    assert message.startswith("gateway.yaml: ")
    assert "line 17: services.user.endpoints[0].address" in message


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ("deadline:\n  default: 10s\n  max: 5s\n", "deadline.default"),
        ("deadline:\n  default: 3s\n  margin: 5s\n", "deadline.margin"),
        ("deadline:\n  default: 0ms\n", "deadline.default"),
        ("limits:\n  idle_timeout: 1h\n", "limits.idle_timeout"),
        ("limits:\n  max_body_bytes: 1.5\n", "limits.max_body_bytes"),
        ("limits:\n  max_header_bytes: 10\n", "limits.max_header_bytes"),
        ("conventions:\n  app_ids: [has space]\n", "conventions.app_ids[0]"),
        ("policies:\n  cross_zone: {connect: fast}\n", "policies.cross_zone.connect"),
        ("policies:\n  other_zone: {connect: 1s}\n", "policies.other_zone"),
        ("admin:\n  listen: nowhere\n", "admin.listen"),
        ("auth:\n  jwt: {algorithm: HS256}\n", "auth.jwt.secret_env"),
        ("auth:\n  jwt: {algorithm: RS256}\n", "auth.jwt"),
        ("auth:\n  jwt: {algorithm: none, secret_env: X}\n", "auth.jwt.algorithm"),
        ("    deadline: {default: 10m}\n", "services.s.deadline.default"),  # > the gateway's max
        ("    deadline: {default: 2s, max: 1s}\n", "services.s.deadline.default"),
        ("    deadline: {default: 1ms}\n", "services.s.deadline.default"),  # <= the margin
        ("    deadline: {max: forever}\n", "services.s.deadline.max"),
        ("    deadline: {margin: 1ms}\n", "services.s.deadline.margin"),  # the gateway's alone
        ("    deadline: 60m\n", "services.s.deadline"),
    ],
)
def test_bad_values(change: str, path: str) -> None:
    """Each bad value is named by its key path."""
    base = (
        "listen: 127.0.0.1:8080\nzone: a\nservices:\n  s:\n    versions: [v1]\n"
        "    endpoints: [{address: 127.0.0.1:9000}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse(base + change)
    assert path in {m.path for m in caught.value.mistakes}, caught.value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("listen: [\n", "not valid YAML"),
        ("- a\n- b\n", "mapping"),
        ("zone: a\n", "is required"),
    ],
)
def test_broken_files(text: str, message: str) -> None:
    """Empty files, invalid YAML, a list at the top, missing required keys."""
    with pytest.raises(ConfigError, match=message):
        parse(text)


def test_a_service_may_have_its_own_deadline_settings() -> None:
    """`services.NAME.deadline` takes `default` and `max`, each falling back to the gateway's;
    a service without it has None (the gateway's settings apply)."""
    config = parse(
        "listen: 127.0.0.1:8080\nzone: a\ndeadline: {default: 2s, max: 20s, margin: 10ms}\n"
        "services:\n"
        "  events:\n    versions: [v1]\n    deadline: {default: 5m, max: 60m}\n"
        "    endpoints: [{address: 127.0.0.1:9000}]\n"
        "  slow:\n    versions: [v1]\n    deadline: {max: 25s}\n"
        "    endpoints: [{address: 127.0.0.1:9001}]\n"
        "  plain:\n    versions: [v1]\n    endpoints: [{address: 127.0.0.1:9002}]\n"
    )
    events, slow = config.services["events"].deadline, config.services["slow"].deadline
    assert events is not None
    assert (events.default, events.max, events.margin) == (300, 3600, 0.01)
    assert slow is not None
    assert (slow.default, slow.max, slow.margin) == (2, 25, 0.01)
    assert config.services["plain"].deadline is None


def test_ipv6_and_service_options() -> None:
    """[::1]:port addresses, strip_prefix and retry_with_idempotency_key."""
    config = parse(
        "listen: '[::1]:8080'\nzone: a\nservices:\n  s:\n    versions: [v1]\n"
        "    strip_prefix: false\n    retry_with_idempotency_key: true\n"
        "    endpoints: [{address: '[::1]:9000'}]\n"
        "auth:\n  jwt: {algorithm: HS256, secret_env: JWT_SECRET, issuer: me, audience: you}\n"
    )
    assert str(config.listen) == "[::1]:8080"
    assert not config.services["s"].strip_prefix
    assert config.services["s"].retry_with_idempotency_key
    assert config.auth is not None
    assert config.auth.secret_env == "JWT_SECRET"


SERVICE_S = "services:\n  s:\n    versions: [v1]\n    endpoints: [{address: 127.0.0.1:9000}]\n"


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        # YAML itself would keep the last of two equal keys without a word
        ("listen: 127.0.0.1:8080\nzone: a\nzone: b\n" + SERVICE_S, "zone", "given twice"),
        ("listen: 127.0.0.1:8080\nzone: a\n? [x]\n: 1\n" + SERVICE_S, "(file)", "plain names"),
        ("listen: 127.0.0.1:8080\nzone: [a]\n" + SERVICE_S, "zone", "a single value"),
        (
            "listen: 127.0.0.1:8080\nzone: a\nservices:\n  s:\n    versions: v1\n"
            "    endpoints: [{address: 127.0.0.1:9000}]\n",
            "services.s.versions",
            "must be a list",
        ),
        (
            "listen: 127.0.0.1:8080\nzone: a\nservices:\n  s:\n    versions: []\n"
            "    endpoints: [{address: 127.0.0.1:9000}]\n",
            "services.s.versions",
            "at least one version",
        ),
        (
            "listen: 127.0.0.1:8080\nzone: a\nservices:\n  s:\n    versions: [v1]\n"
            "    endpoints: []\n",
            "services.s.endpoints",
            "at least one endpoint",
        ),
        (
            "listen: 127.0.0.1:8080\nzone: a\n" + SERVICE_S + "    strip_prefix: yes\n",
            "services.s.strip_prefix",
            "true or false",
        ),
        (
            "listen: 127.0.0.1:8080\nzone: a\n" + SERVICE_S + "retry:\n  budget: {ratio: 0.2x}\n",
            "retry.budget.ratio",
            "a number like 0.2",
        ),
        (
            "listen: 127.0.0.1:8080\nzone: a\n" + SERVICE_S + "retry:\n  budget: {ratio: 11}\n",
            "retry.budget.ratio",
            "at most 10",
        ),
        (
            "listen: 127.0.0.1:8080\nzone: a\n" + SERVICE_S + "retry:\n  backoff_base: 2s\n"
            "  backoff_cap: 1s\n",
            "retry.backoff_base",
            "cannot be longer than retry.backoff_cap",
        ),
    ],
    ids=[
        "duplicate-key",
        "non-scalar-key",
        "list-for-a-value",
        "value-for-a-list",
        "no-versions",
        "no-endpoints",
        "yes-for-a-boolean",
        "not-a-number",
        "number-too-large",
        "backoff-base-over-cap",
    ],
)
def test_shape_mistakes_are_named(text: str, path: str, message: str) -> None:
    """Wrong shapes (a list where a value belongs and back), repeated keys, YAML's loose
    booleans and malformed numbers are each refused with their key path and what was wrong."""
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert any(m.path == path and message in str(m) for m in caught.value.mistakes), caught.value
