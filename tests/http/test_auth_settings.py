"""The settings that decide who a caller is: the mode by environment, and every
configuration that refuses to start, named in one line and never with a secret's value."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import Settings

SECRET = "host-app-shared-secret-0123456789abcdef"


def settings(**values) -> Settings:
    return Settings(_env_file=None, **values)


def refusal(**values) -> str:
    with pytest.raises(ValidationError) as caught:
        settings(**values)
    return str(caught.value)


PRODUCTION = {"app_env": "production", "openrouter_simulator": True}


def test_the_default_mode_by_environment():
    assert settings(app_env="development").auth == "dev"
    assert settings(app_env="test").auth == "dev"
    prod = settings(**PRODUCTION, auth_jwt_secret=SECRET)
    assert (prod.auth, prod.jwt_algorithms) == ("jwt", ("HS256",))
    jwks_only = settings(auth_mode="jwt", auth_jwks_url="https://host.example/jwks.json")
    assert jwks_only.jwt_algorithms == ("RS256", "ES256", "EdDSA")


def test_settings_that_refuse_to_start_name_the_setting_and_never_a_secret():
    secret = "a-secret-that-must-not-leak-0123456789"
    jwks_url = "https://host.example/jwks.json"
    cases = [
        ({**PRODUCTION, "auth_mode": "dev", "auth_jwt_secret": secret}, "AUTH_MODE=dev"),
        ({**PRODUCTION}, "AUTH_JWT_SECRET or AUTH_JWKS_URL"),
        ({"auth_mode": "jwt"}, "AUTH_JWT_SECRET or AUTH_JWKS_URL"),
        ({"auth_mode": "jwt", "auth_jwt_secret": "short"}, "AUTH_JWT_SECRET must be at least"),
        (
            {"auth_mode": "jwt", "auth_jwks_url": jwks_url, "auth_jwt_algorithms": "HS256"},
            "HS256 needs AUTH_JWT_SECRET",
        ),
        (
            {"auth_mode": "jwt", "auth_jwt_secret": secret, "auth_jwt_algorithms": "RS256"},
            "RS256 needs AUTH_JWKS_URL",
        ),
        (
            {"auth_mode": "jwt", "auth_jwt_secret": secret, "auth_jwt_algorithms": "none"},
            "AUTH_JWT_ALGORITHMS: 'none' is not one of",
        ),
        ({"auth_admin_claim": "role"}, "AUTH_ADMIN_CLAIM and AUTH_ADMIN_VALUE"),
        ({**PRODUCTION, "auth_jwks_url": jwks_url}, "STREAM_TOKEN_SECRET"),
        (
            {**PRODUCTION, "auth_jwt_secret": secret, "admin_token": "must-not-leak-1"},
            "ADMIN_TOKEN must be at least 32 bytes",
        ),
        (
            {**PRODUCTION, "auth_jwt_secret": secret, "metrics_token": "x"},
            "METRICS_TOKEN must be at least 32 bytes",
        ),
        (
            {**PRODUCTION, "auth_jwt_secret": secret, "auth_jwks_url": "http://idp.example/jwks"},
            "AUTH_JWKS_URL must be https",
        ),
    ]
    for values, reason in cases:
        message = refusal(**values)
        assert reason in message, (values, message)
        assert "must-not-leak" not in message and "0123456789" not in message, message
    production_jwks = settings(**PRODUCTION, auth_jwks_url=jwks_url, stream_token_secret=secret)
    assert production_jwks.stream_token_root == secret.encode()


def test_production_takes_long_operator_tokens_and_a_jwks_over_https_or_loopback():
    long_token = "0123456789abcdef0123456789abcdef"  # 32 bytes: `openssl rand -hex 16` and up
    for jwks_url in ("https://idp.example/jwks", "http://127.0.0.1:9000/jwks"):
        production = settings(
            **PRODUCTION,
            auth_jwks_url=jwks_url,
            stream_token_secret=SECRET,
            admin_token=long_token,
            metrics_token=long_token,
        )
        assert production.auth == "jwt"
    # Outside production, short tokens and an http JWKS stay possible (tests, a laptop).
    assert settings(
        auth_mode="jwt", auth_jwks_url="http://idp.example/j", admin_token="a"
    ).admin_token


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"app_env": "development", "openrouter_api_key": "sk-or-v1-real"}, "OPENROUTER_API_KEY"),
        ({"app_env": "development", "host": "0.0.0.0"}, "HOST"),
        ({"app_env": "test", "host": "192.168.1.20"}, "HOST"),
    ],
    ids=["real-key", "all-interfaces", "lan-address"],
)
def test_dev_mode_with_a_real_key_or_a_reachable_host_must_be_chosen(values, named):
    # Fallen into, dev mode is an open proxy: anyone spends the key and reads every chat.
    message = refusal(**values)
    assert "AUTH_MODE must be set" in message and named in message
    assert "sk-or-v1-real" not in message
    assert settings(**values, auth_mode="dev").auth == "dev"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_dev_mode_without_a_key_on_loopback_is_still_the_default(host):
    assert settings(app_env="development", host=host).auth == "dev"
