"""Plays the SageMaker training container that moto does not run, as a separate process.

`container --request REQUEST.json --root DIR` does what SageMaker does around the image, with `/opt/ml`
relocated to `DIR/opt/ml`:
  1. downloads each InputDataConfig channel prefix into `opt/ml/input/data/<channel>/`;
  2. runs `AlgorithmSpecification.ContainerEntrypoint` with the job's `Environment` (the Pipes bootstrap
     variables and the SM_* variables the request sets), every value starting with `/opt/ml` rewritten to
     the relocated root: SM_CHANNEL_<NAME>, SM_MODEL_DIR, SM_CHECKPOINT_DIR, SM_OUTPUT_DATA_DIR. A leading
     `python` is this interpreter (the image's python has llm_assets installed; so does this venv);
  3. on a non-zero exit writes the last stderr line to `opt/ml/output/failure` (SageMaker's FailureReason
     source) and exits with the same code;
  4. on success tars `opt/ml/model` into `<S3OutputPath>/<job>/output/model.tar.gz` (SSE-KMS with the output
     key) and syncs `opt/ml/checkpoints` to `CheckpointConfig.S3Uri`.
S3 is reached through AWS_ENDPOINT_URL (the moto server) and the fake credentials in the environment.

`stand-in-trainer` follows the trainer's `--pipes` contract in a few lines (spec from extras, files into the
model dir, result as a custom message, non-zero exit on failure) so the transport is tested without torch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3

SAGEMAKER_ROOT = "/opt/ml"


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _download(s3, uri: str, dest: Path) -> None:
    bucket, prefix = _split(uri)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            target = dest / item["Key"][len(prefix) :].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target))


def container(request_path: Path, root: Path) -> int:
    request = json.loads(request_path.read_text())
    opt_ml = root / "opt" / "ml"
    s3 = boto3.client("s3")
    for channel in request["InputDataConfig"]:
        dest = opt_ml / "input" / "data" / channel["ChannelName"]
        dest.mkdir(parents=True, exist_ok=True)
        _download(s3, channel["DataSource"]["S3DataSource"]["S3Uri"], dest)
    for folder in ("model", "checkpoints", "output/data"):
        (opt_ml / folder).mkdir(parents=True, exist_ok=True)

    env = dict(os.environ)
    for name, value in request.get("Environment", {}).items():
        env[name] = str(opt_ml) + value[len(SAGEMAKER_ROOT) :] if value.startswith(SAGEMAKER_ROOT) else value
    command = list(request["AlgorithmSpecification"]["ContainerEntrypoint"])
    command += request["AlgorithmSpecification"].get("ContainerArguments", [])
    if command[0] == "python":
        command[0] = sys.executable
    proc = subprocess.run(command, env=env, cwd=root, stderr=subprocess.PIPE, text=True, check=False)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {proc.returncode}"
        (opt_ml / "output").mkdir(parents=True, exist_ok=True)
        (opt_ml / "output" / "failure").write_text(reason)
        return proc.returncode

    job = request["TrainingJobName"]
    archive = root / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted((opt_ml / "model").rglob("*")):
            tar.add(path, arcname=path.relative_to(opt_ml / "model").as_posix(), recursive=False)
    output = request["OutputDataConfig"]
    bucket, prefix = _split(output["S3OutputPath"].rstrip("/"))
    key = f"{prefix}/{job}/output/model.tar.gz" if prefix else f"{job}/output/model.tar.gz"
    s3.upload_file(
        str(archive), bucket, key, ExtraArgs={"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": output["KmsKeyId"]}
    )
    bucket, prefix = _split(request["CheckpointConfig"]["S3Uri"])
    for path in sorted((opt_ml / "checkpoints").rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, prefix + path.relative_to(opt_ml / "checkpoints").as_posix())
    return 0


def stand_in_trainer() -> int:
    from llm_assets.training.launch_specs import open_trainer_pipes

    with open_trainer_pipes(message_interval_s=1) as pipes:
        spec = pipes.extras["spec"]
        channels = {name: Path(os.path.expandvars(path)) for name, path in spec["channels"].items()}
        output_dir = Path(os.path.expandvars(spec["output_dir"]))
        checkpoint_dir = Path(os.path.expandvars(spec["checkpoint_dir"]))
        files = {name: sorted(p.name for p in path.rglob("*") if p.is_file()) for name, path in channels.items()}
        pipes.log.info(f"stand-in trainer: channels {files}")
        if spec["config"].get("fail"):
            raise RuntimeError(spec["config"]["fail"])
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "adapter_config.json").write_text(json.dumps(spec["config"]))
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        (checkpoint_dir / "step-1.txt").write_text("1")
        pipes.report_custom_message({"channel_files": files, "config": spec["config"], "output_dir": str(output_dir)})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    run = sub.add_parser("container")
    run.add_argument("--request", type=Path, required=True)
    run.add_argument("--root", type=Path, required=True)
    sub.add_parser("stand-in-trainer")
    args = parser.parse_args()
    if args.mode == "container":
        return container(args.request, args.root)
    return stand_in_trainer()


if __name__ == "__main__":
    raise SystemExit(main())
