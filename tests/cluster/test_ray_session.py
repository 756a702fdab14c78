"""``pipelines.ray_session``: the local head serves the State API and sessions nest."""

from __future__ import annotations


def test_local_head_serves_the_state_api(ray_local):
    """Ray Train's placement-group cleaner polls this API every second; without the
    dashboard each poll failed and printed a warning into every training run's log."""
    from ray.util.state import list_actors

    address = ray_local.get_runtime_context().gcs_address
    actors = list_actors(address=address, limit=5, raise_on_missing_output=False)
    assert isinstance(actors, list)


def test_session_leaves_a_connected_ray_alone(ray_local):
    from flowception.pipelines.ray_session import connect, ray_session

    with ray_session(2):
        assert ray_local.is_initialized()
    assert ray_local.is_initialized()  # the block did not start it, so it did not stop it
    assert connect() is False


def test_check_pid_max_warns_on_a_low_value(tmp_path, caplog):
    from flowception.pipelines.ray_session import MIN_PID_MAX, check_pid_max

    low, high = tmp_path / "low", tmp_path / "high"
    low.write_text("32768\n")
    high.write_text(f"{MIN_PID_MAX}\n")
    with caplog.at_level("WARNING", logger="flowception.ray"):
        assert check_pid_max(high) == MIN_PID_MAX
        assert not caplog.records
        assert check_pid_max(low) == 32768
    assert "kernel.pid_max is 32768" in caplog.text and "sysctl -w kernel.pid_max" in caplog.text
    assert check_pid_max(tmp_path / "missing") is None


def test_local_head_listens_on_loopback_only(ray_local):
    """Every socket a process of the local head listens on is a loopback one (the GCS,
    raylet, object manager, dashboard and its agents, runtime-env agent and workers)."""
    import psutil

    # this session's Ray processes only (other fixtures' servers are children of pytest too)
    session = ray_local._private.worker._global_node.get_session_dir_path()
    ray_pids = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if session in " ".join(p.cmdline()):
                ray_pids.add(p.pid)
        except psutil.Error:
            continue
    listening = [
        (c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name())
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.pid in ray_pids
    ]
    names = {name for _, _, name in listening}
    assert {"gcs_server", "raylet"} <= names, listening  # the check saw Ray's own servers
    exposed = [x for x in listening if x[0] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert not exposed, exposed
