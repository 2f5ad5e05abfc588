"""The one redaction every recorded config and command line goes through (the CLI tests: tests/test_tracking.py)."""

from __future__ import annotations

import pytest

from mtlexp.redact import redact, redact_values


@pytest.mark.parametrize(
    "text,expected",
    [
        ("https://user:s3cret@host:5000/x", "https://user:***@host:5000/x"),
        ("redis://:s3cret@cache", "redis://:***@cache"),
        ("postgresql+psycopg2://db:s3cret@db/runs?ssl=1", "postgresql+psycopg2://db:***@db/runs?ssl=1"),
        # An unescaped "@" in a password: the host is after the last one, as URI parsers read it.
        ("https://user:s3c@ret@host/x", "https://user:***@host/x"),
        # Hydra's sweepers escape ":" (and spaces, commas) in the overrides they record.
        (r"+src=https\://user\:s3cret@host/x,seed=1", r"+src=https\://user\:***@host/x,seed=1"),
        (r"+src=https\://user\:s3\,c\ ret@host", r"+src=https\://user\:***@host"),
        ("a=https://u:s3cret@h1,b=https://v:s3cret@h2", "a=https://u:***@h1,b=https://v:***@h2"),
        ("tracking_uri: 'http://user:s3cret@host'", "tracking_uri: 'http://user:***@host'"),
        # Nothing to hide: a user without a password, paths, mail addresses, text already masked.
        ("ssh://git@github.com/org/repo", "ssh://git@github.com/org/repo"),
        ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
        ("mailto:someone@example.org", "mailto:someone@example.org"),
        ("https://user:***@host", "https://user:***@host"),
    ],
)
def test_redact_masks_the_password_of_every_uri(text, expected):
    assert redact(text) == expected


def test_redact_values_keeps_the_structure():
    config = {"logger": {"uri": "http://u:s3cret@h", "port": 5000, "tags": ["x", "ftp://a:s3cret@b"]}, "n": None}
    assert redact_values(config) == {"logger": {"uri": "http://u:***@h", "port": 5000, "tags": ["x", "ftp://a:***@b"]},
                                     "n": None}
