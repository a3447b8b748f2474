"""Job YAML → JobSpec: layering, overrides, every problem reported at once."""

import re
from pathlib import Path

import pytest
import yaml

from hpcft.errors import ConfigError
from hpcft.spec import JobSpec, build_spec, spec_to_dict
from hpcft.spec.io import load_spec_text
from hpcft.spec.layering import check_inputs, load_job, parse_overrides


def write(tmp_path: Path, data: dict, name: str = "job.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


BASE = {"train": {"model": "m", "data": {"train": "d.jsonl"}}}


def test_relative_paths_resolve_against_the_yaml_file(tmp_path, monkeypatch):
    job = write(tmp_path, BASE)
    monkeypatch.chdir("/")
    spec = load_job(job)
    assert spec.train.model == str(tmp_path / "m")
    assert spec.train.data.train == str(tmp_path / "d.jsonl")


def test_precedence_profile_job_override_flag(tmp_path):
    profile = write(tmp_path, {"resources": {"partition": "p", "time": "10", "nodes": 3}}, "profile.yaml")
    job = write(tmp_path, {**BASE, "resources": {"time": "20", "nodes": 2}})
    spec = load_job(job, profile=profile, overrides=["resources.nodes=5"], flags={"resources.time": "30"})
    assert spec.resources.partition == "p"  # profile
    assert spec.resources.nodes == 5  # -o beats the job file
    assert spec.resources.time == "30"  # flag beats everything


def test_none_flags_do_not_override(tmp_path):
    spec = load_job(write(tmp_path, {**BASE, "resources": {"nodes": 2}}), flags={"resources.nodes": None})
    assert spec.resources.nodes == 2


def test_all_problems_at_once_with_paths_and_hints(tmp_path):
    job = write(
        tmp_path,
        {
            "resources": {"nodez": 2, "time": "soon", "gpus_per_node": -1, "exclusive": "yes"},
            "train": {"lr": "fast", "zero": 5, "data": {"format": "csv"}},
            "launch": {"backend": "slurm"},
        },
    )
    with pytest.raises(ConfigError) as err:
        load_job(job)
    text = str(err.value)
    assert str(job) in text
    for expected in [
        "resources.nodez: unknown key (did you mean resources.nodes?)",
        "resources.time: expected sbatch time",
        "resources.gpus_per_node: must be at least 0, got -1",
        "resources.exclusive: expected bool",
        "train.lr: expected float, got str 'fast'",
        "train.zero: must be at most 3, got 5",
        "train.data.format: expected one of auto, alpaca, chat, text",
        "launch.backend: expected one of auto, sbatch, local",
    ]:
        assert expected in text
    assert len(err.value.problems) == 8


def test_override_syntax_and_unknown_keys():
    assert parse_overrides(["train.lr=1e-4", "resources.exclusive=true"]) == {
        "train": {"lr": "1e-4"},
        "resources": {"exclusive": True},
    }
    with pytest.raises(ConfigError) as err:
        parse_overrides(["train.lrr=1", "nonsense"])
    assert "did you mean train.lr" in str(err.value)
    assert "expected KEY=VALUE" in str(err.value)


def test_missing_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_job(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job(bad)


def test_secrets_are_refused_in_env(tmp_path):
    job = write(tmp_path, {**BASE, "launch": {"env": {"HF_TOKEN": "hf_abc", "OK_VAR": 1}}})
    with pytest.raises(ConfigError) as err:
        load_job(job)
    assert "launch.env.HF_TOKEN: looks like a secret" in str(err.value)
    assert "env_passthrough" in str(err.value)
    assert "hf_abc" not in str(err.value)


def test_local_backend_is_single_node(tmp_path):
    with pytest.raises(ConfigError, match="local backend runs on this machine only"):
        load_job(write(tmp_path, {**BASE, "resources": {"nodes": 2}, "launch": {"backend": "local"}}))


def test_backslash_in_run_name_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.name: may not contain"):
        load_job(write(tmp_path, {**BASE, "run": {"name": "a\\b"}}))


def test_model_and_data_required_unless_a_script_runs(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_job(write(tmp_path, {}))
    assert "train.model: required" in str(err.value) and "train.data.train: required" in str(err.value)
    spec = load_job(write(tmp_path, {}), flags={"launch.command": ["/x/train.py"]})
    assert spec.launch.command == ("/x/train.py",)


def test_spec_round_trips_through_yaml():
    spec = build_spec({**BASE, "launch": {"env": {"A": "1"}, "setup": ["module load x"]}})
    again = build_spec(yaml.safe_load(yaml.safe_dump(spec_to_dict(spec))))
    assert again == spec
    assert isinstance(again, JobSpec)


def test_exponent_without_dot_is_a_float(tmp_path):
    # YAML 1.1 reads 1e-4 as a string; users write it that way all the time.
    spec = load_job(write(tmp_path, BASE), overrides=["train.lr=1e-4"])
    assert spec.train.lr == 1e-4


def test_pdsh_refuses_run_paths_its_remote_shell_would_split(tmp_path):
    job = write(tmp_path, {**BASE, "run": {"name": "my run"}, "launch": {"launcher": "deepspeed-pdsh"}})
    with pytest.raises(ConfigError, match="deepspeed-pdsh needs a run directory path without blanks"):
        load_job(job)
    assert load_job(job, overrides=["launch.launcher=deepspeed"]).run.name == "my run"


def test_submitit_refuses_mpirun_launchers(tmp_path):
    job = write(tmp_path, {**BASE, "launch": {"backend": "submitit", "launcher": "deepspeed-openmpi"}})
    with pytest.raises(ConfigError, match="cannot run under the submitit backend"):
        load_job(job)


def test_unquoted_times_stay_times_not_base_60_integers(tmp_path):
    # YAML 1.1 (PyYAML's safe_load) reads 12:00:00 as 43200, which sbatch would take as 30 days
    job = tmp_path / "job.yaml"
    job.write_text("resources:\n  time: 12:00:00\nlaunch:\n  command: [train.py]\n")
    assert load_job(job).resources.time == "12:00:00"
    assert load_job(job, overrides=["resources.time=4:00:00"]).resources.time == "4:00:00"
    assert load_job(job, overrides=["train.lr=1.0e-3"]).train.lr == 0.001


@pytest.mark.parametrize("key", ["resources.partition", "resources.account", "resources.qos", "resources.constraint"])
def test_control_characters_are_refused_with_the_field_named(key):
    with pytest.raises(ConfigError) as err:
        load_job(None, overrides=[f'{key}="a\\nsrun rm -rf x"', "launch.command=[t.py]"])
    assert f"{key}: may not contain control characters ('\\n')" in str(err.value)


def test_extra_sbatch_and_env_values_with_newlines_or_nulls_are_refused():
    with pytest.raises(ConfigError) as err:
        build_spec({"resources": {"extra_sbatch": ["--reservation=x\n#SBATCH --x"]}, "launch": {"env": {"A": None}}})
    assert "resources.extra_sbatch: may not contain control characters" in str(err.value)
    assert "launch.env: A: no value (null)" in str(err.value)


@pytest.mark.parametrize(
    ("command", "flags", "message"),
    [
        (["t.py", "--x", "{data_dir}"], {}, "unknown placeholder {data_dir}"),
        (["t.py", "--deepspeed", "{ds_config}"], {}, "{ds_config} but the job has no DeepSpeed config"),
        (["t.py", "--cfg", "{accelerate_config}"], {}, "{accelerate_config} needs --launcher accelerate"),
        (["t.py", '{"a": 1}'], {}, "unknown placeholder"),
        (["t.py", "--x", "{run_dir"], {}, "write {{ and }} for literal braces"),
        (["-m"], {}, "-m needs a module name"),
        (["-m", "not a module"], {}, "-m needs a module name"),
    ],
)
def test_bad_commands_are_refused_with_what_and_a_hint(tmp_path, command, flags, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_job(write(tmp_path, {}), flags={"launch.command": command, **flags})


def test_launcher_none_needs_a_command(tmp_path):
    with pytest.raises(ConfigError, match="none runs your own command once per node"):
        load_job(write(tmp_path, BASE), flags={"launch.launcher": "none"})


def test_commands_of_every_kind_pass_and_only_files_are_checked(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print(1)\n")
    for command in (["-m", "pkg.train", "--lr", "1"], ["my-trainer", "--output_dir", "{output_dir}"], [str(script)]):
        check_inputs(load_job(write(tmp_path, {}), flags={"launch.command": command}))
    with pytest.raises(ConfigError, match=r"launch.command: file not found"):
        check_inputs(load_job(write(tmp_path, {}), flags={"launch.command": [str(tmp_path / "nope.py")]}))
    with pytest.raises(ConfigError, match="is not an executable file"):
        check_inputs(load_job(write(tmp_path, {}), flags={"launch.command": [str(script.parent / "train.py.sh")]}))


def test_a_command_file_in_the_yaml_is_relative_to_the_yaml(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("launch:\n  command: [sub/train.py, --lr, '1']\n")
    assert load_job(job).launch.command == (str(tmp_path / "sub/train.py"), "--lr", "1")
    job.write_text("launch:\n  command: [-m, pkg.train]\n")
    assert load_job(job).launch.command == ("-m", "pkg.train")


def test_a_run_spec_of_an_earlier_hpcft_still_loads(tmp_path):
    # spec.yaml of a run queued before the upgrade (launch.script/script_args, launch.max_restarts)
    old = {"launch": {"script": "/x/t.py", "script_args": ["--lr", "1"], "max_restarts": 0, "launcher": "torchrun"}}
    spec = load_spec_text(yaml.safe_dump(old), "spec.yaml")
    assert spec.launch.command == ("/x/t.py", "--lr", "1")
    assert (
        load_spec_text(yaml.safe_dump({"launch": {"script": None, "script_args": []}, **BASE}), "s").launch.command
        == ()
    )


def test_a_job_file_with_an_old_key_says_what_replaced_it(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("launch.script: replaced by launch.command: [SCRIPT, ARGS...]")):
        load_job(write(tmp_path, {"launch": {"script": "t.py"}}))
