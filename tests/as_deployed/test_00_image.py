"""The image as the pods run it: its own HEALTHCHECK passes on a ``serve`` replica, and the
process runs as the non-root user on a read-only root with a writable ``/tmp``."""

from __future__ import annotations

from tests.support.deployed_tree import Tree


def test_the_images_healthcheck_passes_on_a_replica(tree: Tree) -> None:
    checked = tree.podman.healthcheck(tree.serve_names[0])
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_replica_runs_as_uid_10001_on_a_read_only_root(tree: Tree) -> None:
    name = tree.serve_names[0]
    assert tree.podman.exec(name, "id", "-u").stdout.strip() == "10001"
    refused = tree.podman.exec(name, "touch", "/app/written")
    assert refused.returncode != 0, "the root filesystem is writable"
    assert "Read-only file system" in refused.stderr, refused.stderr
    assert tree.podman.exec(name, "touch", "/tmp/written").returncode == 0
