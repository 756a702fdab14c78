"""Session fixtures that start real services (each a real process on loopback).

Every fixture module lives in ``tests/fixtures/`` and is registered here, with
``timing`` (each test's wall time and CPU share, written to ``test-times.json``).
"""

pytest_plugins = [
    "tests.fixtures.ray_local",
    "tests.fixtures.s3",
    "tests.fixtures.i3d",
    "tests.fixtures.mlflow_server",
    "tests.fixtures.two_node",
    "tests.fixtures.timing",
]
