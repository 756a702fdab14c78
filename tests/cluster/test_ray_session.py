"""``cluster.ray_session``: the local head serves the State API and sessions nest."""

from __future__ import annotations


def test_local_head_serves_the_state_api(ray_local):
    """Ray Train's placement-group cleaner polls this API every second; without the
    dashboard each poll failed and printed a warning into every training run's log."""
    from ray.util.state import list_actors

    address = ray_local.get_runtime_context().gcs_address
    actors = list_actors(address=address, limit=5, raise_on_missing_output=False)
    assert isinstance(actors, list)


def test_session_leaves_a_connected_ray_alone(ray_local):
    from cluster.ray_session import connect, ray_session

    with ray_session(2):
        assert ray_local.is_initialized()
    assert ray_local.is_initialized()  # the block did not start it, so it did not stop it
    assert connect() is False
