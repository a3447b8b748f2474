"""Lemon nodes (#26 item 6): incidents with a decay, and what a job can do without.

The weights are worked by hand (one incident: 1, ½ a half-life later ... ); the exclusion never leaves a job
with fewer nodes than it needs.
"""

from __future__ import annotations

import json

import pytest

from hpcft.errors import ConfigError
from hpcft.rundir import lemons
from hpcft.spec import build_spec

H = 3600.0


def test_an_incident_halves_every_day_and_a_node_is_a_lemon_down_to_a_half():
    now = 100 * H
    incidents = [{"node": "node2", "time": now - 12 * H}, {"node": "node3", "time": now - 30 * H},
                 {"node": "node3", "time": now - 30 * H}, {"node": "node4", "time": now - 24.5 * H}]  # fmt: skip
    weights = lemons.weights(incidents, now)
    assert weights["node2"] == pytest.approx(2**-0.5)  # half a half-life
    assert weights["node3"] == pytest.approx(2 * 2 ** (-30 / 24))  # two incidents: still a lemon after 30 h
    assert lemons.lemons(incidents, now) == ["node2", "node3"]  # node4's single incident is just over a day old


def test_lemons_are_excluded_only_where_the_partition_keeps_enough_nodes():
    part = ["node1", "node2", "node3", "node4"]
    assert lemons.exclusion(["node2", "gpu9"], part, 3) == (["node2"], lemons.exclusion(["node2"], part, 3)[1])
    kept, note = lemons.exclusion(["node2", "node3"], part, 3)
    assert kept == [] and "without them the partition has 2 of the 3 nodes the job needs" in note
    assert lemons.exclusion(["node2"], None, 1) == ([], "")  # sinfo could not say: exclude nothing
    assert lemons.exclusion([], part, 1) == ([], "")


def test_a_job_excludes_the_recorded_lemons_after_the_users_own_and_forget_clears_one(tmp_path):
    lemons.record(tmp_path, ["node2", "node2"], "hang at step 31", "run-a")
    lemons.record(tmp_path, ["node3"], "straggler (2.4× slower)", "run-b")
    assert [i["node"] for i in lemons.read_incidents(tmp_path)] == ["node2", "node3"]
    spec = build_spec({"train": {"model": "m", "data": {"train": "d"}}, "resources": {"nodes": 2, "exclude": "gpu7"}})
    asked = []

    def partition(name):
        asked.append(name)
        return ["node1", "node2", "node3", "node4"]

    hosts, note = lemons.to_exclude(tmp_path, spec, partition)
    assert hosts == "gpu7,node2,node3" and "excluding lemon nodes node2,node3" in note and asked == [None]
    off = build_spec({"train": {"model": "m", "data": {"train": "d"}}, "run": {"avoid_lemons": False}})
    assert lemons.to_exclude(tmp_path, off, partition) == (None, "")
    assert lemons.forget(tmp_path, "node2") == 1
    assert lemons.to_exclude(tmp_path, spec, partition)[0] == "gpu7,node3"


def test_a_damaged_record_is_no_incident(tmp_path):
    lemons.path(tmp_path).write_text("{not json")
    assert lemons.read_incidents(tmp_path) == []
    lemons.path(tmp_path).write_text(json.dumps({"incidents": [{"node": 3}, "x", {"node": "node5", "time": 0}]}))
    assert [i["node"] for i in lemons.read_incidents(tmp_path)] == ["node5"]


def test_resources_exclude_is_a_host_list():
    with pytest.raises(ConfigError, match=r"resources\.exclude"):
        build_spec({"train": {"model": "m", "data": {"train": "d"}}, "resources": {"exclude": "node1; rm -rf /"}})


def test_partition_nodes_from_recorded_sinfo():
    from hpcft.slurm import client
    from tests.conftest import REPO

    text = (REPO / "tests" / "data" / "slurm" / "sinfo_partitions.txt").read_text()  # sinfo -h -N -o "%N|%P", lab
    assert client.parse_partition_nodes(text, None) == ["node1", "node2"]  # the default partition, "debug*"
    assert client.parse_partition_nodes(text, "high") == ["node1", "node2"]
    assert client.parse_partition_nodes(text, "gpu") == []
