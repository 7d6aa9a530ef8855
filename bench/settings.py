"""aipb.settings with the benchmark's URLconf (bench.anchor: the trivial-view anchor in front of aipb.urls).
Only bench.api's server and process use it; nothing else changes."""

from aipb.settings import *  # noqa: F403

ROOT_URLCONF = "bench.anchor"
