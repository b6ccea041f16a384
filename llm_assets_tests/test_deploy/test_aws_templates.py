"""deploy/aws: the IAM policies, the lake bucket policy and the alarms, filled and checked against the code.

The key prefixes, job names and SLO figures come from the package, so moving a prefix in the code without
moving its grant fails here. The real lake writer (`S3LakeStorage` over an in-memory client), the gateway's
feedback inbox and sample recorder, the audit log and dagster-aws's Pipes S3 transport produce the requests
that a small IAM evaluator (Allow/Deny, `*`/`?` wildcards, the condition operators used here) then judges.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import string
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import botocore.session
import click
import pytest
import yaml
from botocore.exceptions import ClientError
from botocore.validate import ParamValidator
from dagster_aws.pipes import PipesS3ContextInjector, PipesS3MessageReader

from llm_assets.audit import AUDIT_HEAD_KEY, AUDIT_LOG_KEY, AuditLog
from llm_assets.cli import main as cli_main
from llm_assets.curation import pipeline
from llm_assets.defs.evaluation.selection import ADAPTATION_PREFIX
from llm_assets.defs.serving.assets import DEPLOYMENT_PREFIX
from llm_assets.defs.training.adaptation import (
    ADAPTER_PREFIX,
    CHECKPOINT_PREFIX,
    CPT_PREFIX,
    DPO_PREFIX,
    FEEDBACK_PREFIX,
    SWEEP_PREFIX,
)
from llm_assets.defs.training.assets import BASE_MODEL_PREFIX, SFT_PREFIX, TOKENIZER_PREFIX
from llm_assets.lake.shards import manifest_key
from llm_assets.lake.storage import S3LakeStorage
from llm_assets.monitoring.feedback import FEEDBACK_INBOX, FeedbackInbox
from llm_assets.monitoring.samples import RAW_SAMPLES_PREFIX
from llm_assets.registry.store import REGISTRY_PREFIX
from llm_assets.serving.gateway import SAMPLES_PREFIX, Gateway, GatewaySettings, SampleRecorder
from llm_assets.serving.loadtest import DEFAULT_SLO
from llm_assets.serving.sagemaker_deploy import VARIANT_NAME
from llm_assets.training.launch_specs import SageMakerTrainingSettings, sagemaker_training_request

REPO = Path(__file__).resolve().parents[2]
AWS_DIR = REPO / "deploy" / "aws"
PACKAGE = REPO / "llm_assets"

# Realistic, longish values: the filled policies must still fit IAM's size limit with names like these.
VALUES = {
    "AccountId": "111122223333",
    "Region": "eu-central-1",
    "LakeBucket": "ministry-of-example-llm-lake-prod",
    "LakePrefix": "prod",
    "KmsKeyArn": "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "TrainingBucket": "ministry-of-example-llm-training-prod",
    "TrainingPrefix": "training-jobs",
    "TrainingKmsKeyArn": "arn:aws:kms:eu-central-1:111122223333:key/5678abcd-12ab-34cd-56ef-1234567890ab",
    "TrainingRoleName": "llm-assets-training-prod",
    "TrainerRepository": "llm-assets/trainer",
    "ServingRepository": "llm-assets/serving-vllm",
    "EndpointName": "llm-assets-prod",
    "VpcId": "vpc-0123456789abcdef0",
    "VpceId": "vpce-0123456789abcdef0",
    "BreakGlassRoleArn": "arn:aws:iam::111122223333:role/break-glass-admin",
}
TRAINING_ROLE_ARN = f"arn:aws:iam::{VALUES['AccountId']}:role/{VALUES['TrainingRoleName']}"
SERVING_ROLE_ARN = f"arn:aws:iam::{VALUES['AccountId']}:role/llm-assets-serving"
POLICY_FILES = ("iam-training-role-policy.json", "iam-serving-role-policy.json", "s3-bucket-policy.json")
SENSITIVE_SERVICES = ("s3", "kms", "iam", "sagemaker")
MANAGED_POLICY_MAX_CHARS = 6144

# What each role may do in the lake, from the code's own constants (prefixes without a trailing '/').
AUDIT_DIR = os.path.dirname(AUDIT_LOG_KEY)
CURATED_DIR = manifest_key(pipeline.CURATED, "any-source").rsplit("/", 2)[0]
MODELS_DIR = os.path.commonpath(
    [BASE_MODEL_PREFIX, TOKENIZER_PREFIX, CPT_PREFIX, ADAPTER_PREFIX, SWEEP_PREFIX, DPO_PREFIX]
)
TRAINING_INPUTS = {CURATED_DIR, SFT_PREFIX, FEEDBACK_PREFIX, MODELS_DIR}
TRAINING_WRITES = {
    CPT_PREFIX,
    ADAPTER_PREFIX,
    SWEEP_PREFIX,
    DPO_PREFIX,
    ADAPTATION_PREFIX,
    CHECKPOINT_PREFIX,
    AUDIT_DIR,
}
TRAINING_READS = TRAINING_INPUTS | TRAINING_WRITES  # outputs are read back: pointers, checkpoints, audit head
TRAINING_DELETES = {CHECKPOINT_PREFIX}
SERVING_READS = {CPT_PREFIX, ADAPTER_PREFIX}
SERVING_WRITES = {SAMPLES_PREFIX, FEEDBACK_INBOX}
UNCURATED_DATASETS = (
    pipeline.RAW,
    pipeline.NORMALIZED,
    pipeline.PII_SCRUBBED,
    pipeline.DEDUPLICATED,
    pipeline.QUALITY,
    pipeline.PERPLEXITY,
    pipeline.PII_HITS,
)


# ---------------------------------------------------------------- loading and filling


def placeholders(text: str) -> set[str]:
    return set(re.findall(r"\$\{(\w+)\}", text))


def fill(text: str, values: Mapping[str, str] = VALUES) -> str:
    """The README's fill step: string.Template, so an unfilled placeholder is a KeyError, never left in."""
    return string.Template(text).substitute(values)


def load_policy(name: str) -> dict[str, Any]:
    return json.loads(fill((AWS_DIR / name).read_text()))


def load_alarms() -> dict[str, Any]:
    return yaml.safe_load((AWS_DIR / "alarms.yaml").read_text())


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def lake_arn(key: str) -> str:
    return f"arn:aws:s3:::{VALUES['LakeBucket']}/{VALUES['LakePrefix']}/{key}"


# ---------------------------------------------------------------- a small IAM evaluator


def wildcard_match(pattern: str, value: str) -> bool:
    """IAM's matching for actions and ARNs: `*` any run of characters (including '/'), `?` exactly one."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def _action_match(pattern: str, action: str) -> bool:
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), action, flags=re.IGNORECASE) is not None


def _condition_holds(operator: str, key: str, expected: Any, context: Mapping[str, Any]) -> bool:
    wanted = [str(v) for v in as_list(expected)]
    present = key in context and context[key] is not None
    actual = [str(v) for v in as_list(context[key])] if present else []
    if operator == "Null":
        return (not present) == (wanted[0] == "true")
    if operator in ("StringNotEquals", "ArnNotEquals"):
        return not present or not any(a in wanted for a in actual)
    if not present:
        return False
    if operator in ("StringEquals", "ArnEquals", "Bool"):
        return any(a.lower() == w.lower() if operator == "Bool" else a == w for a in actual for w in wanted)
    if operator in ("StringLike", "ArnLike"):
        return all(any(wildcard_match(w, a) for w in wanted) for a in actual)
    raise AssertionError(f"condition operator {operator} is not understood by this evaluator; extend it")


def statement_applies(st: Mapping[str, Any], action: str, resource: str, context: Mapping[str, Any]) -> bool:
    if not any(_action_match(a, action) for a in as_list(st["Action"])):
        return False
    if not any(wildcard_match(r, resource) for r in as_list(st["Resource"])):
        return False
    return all(
        _condition_holds(op, key, expected, context)
        for op, block in st.get("Condition", {}).items()
        for key, expected in block.items()
    )


def allows(policy: Mapping[str, Any], action: str, resource: str, context: Mapping[str, Any] | None = None) -> bool:
    """An identity policy's verdict (no Deny here means: allowed exactly when some Allow applies)."""
    context = context or {}
    statements = policy["Statement"]
    if any(st["Effect"] == "Deny" and statement_applies(st, action, resource, context) for st in statements):
        return False
    return any(st["Effect"] == "Allow" and statement_applies(st, action, resource, context) for st in statements)


def denies(policy: Mapping[str, Any], action: str, resource: str, context: Mapping[str, Any]) -> list[str]:
    """The Sids of the Deny statements of a resource policy that refuse this request."""
    return [
        st["Sid"]
        for st in policy["Statement"]
        if st["Effect"] == "Deny" and statement_applies(st, action, resource, context)
    ]


# ---------------------------------------------------------------- checkers (each has a test that it can fail)


def _wildcard_resource(resource: str) -> bool:
    return (
        resource == "*"
        or re.fullmatch(r"arn:aws:[a-z0-9-]+:[^:]*:[^:]*:\*", resource) is not None
        or (resource.startswith("arn:aws:s3:::") and resource.removeprefix("arn:aws:s3:::").split("/")[0] in ("*", ""))
    )


def policy_problems(policy: Mapping[str, Any]) -> list[str]:
    """Least-privilege rules for the role policies; one line per breach."""
    problems = []
    if policy.get("Version") != "2012-10-17":
        problems.append("Version must be 2012-10-17 (older versions do not expand policy variables)")
    for i, st in enumerate(policy.get("Statement", [])):
        where = f"statement {i} ({st.get('Sid', 'no Sid')})"
        if "${" in json.dumps(st):
            problems.append(f"{where}: unfilled placeholder")
        missing = [k for k in ("Effect", "Action", "Resource") if k not in st]
        if missing or "NotAction" in st or "NotResource" in st:
            problems.append(f"{where}: needs Effect, Action and Resource (no NotAction/NotResource); missing {missing}")
            continue
        if st["Effect"] != "Allow":
            continue
        actions = as_list(st["Action"])
        resources = as_list(st["Resource"])
        problems += [f"{where}: wildcard action {a}" for a in actions if "*" in a]
        sensitive = [a for a in actions if a.split(":")[0] in SENSITIVE_SERVICES]
        if sensitive:
            problems += [f"{where}: {sensitive} on wildcard resource {r}" for r in resources if _wildcard_resource(r)]
        if any(a.split(":")[0] in ("kms", "iam") for a in actions):
            problems += [f"{where}: keys and roles must be named exactly, not {r}" for r in resources if "*" in r]
        if "iam:PassRole" in actions:
            if resources != [TRAINING_ROLE_ARN]:
                problems.append(f"{where}: iam:PassRole on {resources}, not only {TRAINING_ROLE_ARN}")
            if st.get("Condition", {}).get("StringEquals", {}).get("iam:PassedToService") != "sagemaker.amazonaws.com":
                problems.append(f"{where}: iam:PassRole without iam:PassedToService = sagemaker.amazonaws.com")
    return problems


def object_prefixes(policy: Mapping[str, Any], action: str, bucket: str) -> set[str]:
    """Lake key prefixes (below the lake prefix) that Allow statements grant `action` on, e.g. 'models/cpt'."""
    root = f"arn:aws:s3:::{bucket}/{VALUES['LakePrefix']}/"
    found = set()
    for st in policy["Statement"]:
        if st["Effect"] == "Allow" and action in as_list(st["Action"]):
            for resource in as_list(st["Resource"]):
                if resource.startswith(f"arn:aws:s3:::{bucket}/"):
                    assert resource.startswith(root) and resource.endswith("/*"), f"{action} on {resource}: no prefix"
                    found.add(resource.removeprefix(root).removesuffix("/*"))
    return found


def s3_buckets(policy: Mapping[str, Any]) -> set[str]:
    """Every bucket an Allow statement names in an S3 resource."""
    return {
        resource.removeprefix("arn:aws:s3:::").split("/")[0]
        for st in policy["Statement"]
        if st["Effect"] == "Allow"
        for resource in as_list(st["Resource"])
        if resource.startswith("arn:aws:s3:::")
    }


def list_prefixes(policy: Mapping[str, Any], bucket: str) -> set[str]:
    """Lake key prefixes that ListBucket is limited to (through the s3:prefix condition)."""
    found = set()
    for st in policy["Statement"]:
        lists = st["Effect"] == "Allow" and "s3:ListBucket" in as_list(st["Action"])
        if lists and as_list(st["Resource"]) == [f"arn:aws:s3:::{bucket}"]:
            for prefix in as_list(st["Condition"]["StringLike"]["s3:prefix"]):
                found.add(prefix.removeprefix(f"{VALUES['LakePrefix']}/").removesuffix("/*"))
    return found


def bucket_policy_problems(policy: Mapping[str, Any]) -> list[str]:
    """The lake bucket policy must deny non-TLS, unencrypted or other-key puts, and access outside the VPCE."""
    bucket, objects = f"arn:aws:s3:::{VALUES['LakeBucket']}", f"arn:aws:s3:::{VALUES['LakeBucket']}/*"
    statements = policy.get("Statement", [])
    problems = [f"{st.get('Sid')}: a bucket policy here only denies" for st in statements if st.get("Effect") != "Deny"]
    problems += [f"{st.get('Sid')}: Principal must be '*'" for st in statements if st.get("Principal") != "*"]

    def find(action: str, resources: set[str], operator: str, key: str) -> list[Mapping[str, Any]]:
        return [
            st
            for st in statements
            if st.get("Effect") == "Deny"
            and action in as_list(st.get("Action", []))
            and resources <= set(as_list(st.get("Resource", [])))
            and key in st.get("Condition", {}).get(operator, {})
        ]

    tls = find("s3:*", {bucket, objects}, "Bool", "aws:SecureTransport")
    if not tls or tls[0]["Condition"]["Bool"]["aws:SecureTransport"] != "false":
        problems.append("no deny of s3:* on the bucket and its objects when aws:SecureTransport is false")
    sse = find("s3:PutObject", {objects}, "StringNotEquals", "s3:x-amz-server-side-encryption")
    if not sse or sse[0]["Condition"]["StringNotEquals"]["s3:x-amz-server-side-encryption"] != "aws:kms":
        problems.append("no deny of PutObject whose s3:x-amz-server-side-encryption is not aws:kms")
    key_id = "s3:x-amz-server-side-encryption-aws-kms-key-id"
    other_key = find("s3:PutObject", {objects}, "StringNotEquals", key_id)
    if not other_key or other_key[0]["Condition"]["StringNotEquals"][key_id] != VALUES["KmsKeyArn"]:
        problems.append(f"no deny of PutObject whose {key_id} is not the project key")
    vpce = find("s3:*", {bucket, objects}, "StringNotEquals", "aws:SourceVpce")
    if not vpce or vpce[0]["Condition"]["StringNotEquals"]["aws:SourceVpce"] != VALUES["VpceId"]:
        problems.append("no deny of s3:* when aws:SourceVpce is not the project's VPC endpoint")
    elif vpce[0]["Condition"].get("ArnNotEquals", {}).get("aws:PrincipalArn") != VALUES["BreakGlassRoleArn"]:
        problems.append("the VPC endpoint deny has no aws:PrincipalArn exception for the break-glass role")
    return problems


VALID_MISSING_DATA = {"breaching", "notBreaching", "ignore", "missing"}


def alarm_problems(template: Mapping[str, Any]) -> list[str]:
    resources = template.get("Resources", {})
    problems = [
        f"{name}: not an AWS::CloudWatch::Alarm"
        for name, r in resources.items()
        if r.get("Type") != "AWS::CloudWatch::Alarm"
    ]
    by_metric: dict[str, Mapping[str, Any]] = {}
    for name, resource in resources.items():
        props = resource.get("Properties", {})
        if props.get("AlarmActions") != [{"Ref": "AlarmTopicArn"}]:
            problems.append(f"{name}: AlarmActions must be the AlarmTopicArn parameter")
        if props.get("TreatMissingData") not in VALID_MISSING_DATA:
            problems.append(f"{name}: TreatMissingData must be one of {sorted(VALID_MISSING_DATA)}")
        if props.get("DatapointsToAlarm", 1) > props.get("EvaluationPeriods", 0):
            problems.append(f"{name}: DatapointsToAlarm exceeds EvaluationPeriods")
        metrics = [props.get("MetricName")] + [
            q["MetricStat"]["Metric"]["MetricName"] for q in props.get("Metrics", []) if "MetricStat" in q
        ]
        by_metric |= {m: props for m in metrics if m}
    errors = by_metric.get("Invocation5XXErrors")
    if errors is None or errors.get("Namespace") != "AWS/SageMaker":
        problems.append("no AWS/SageMaker Invocation5XXErrors alarm")
    latency = by_metric.get("ModelLatency")
    if latency is None or latency.get("ExtendedStatistic") != "p99" or "Statistic" in latency:
        problems.append("no ModelLatency alarm on ExtendedStatistic p99")
    if "EstimatedCharges" not in by_metric:
        problems.append("no AWS/Billing EstimatedCharges alarm")
    return problems


# ---------------------------------------------------------------- an in-memory S3 client for the real writers


class MemoryS3:
    """Just enough of boto3's S3 client for S3LakeStorage and dagster-aws's Pipes transport; records each call."""

    meta = SimpleNamespace(region_name=VALUES["Region"])

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.calls: list[tuple[str, str, str, dict[str, Any]]] = []

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **extra: Any) -> dict[str, Any]:
        self.calls.append(("s3:PutObject", Bucket, Key, extra))
        self.objects[(Bucket, Key)] = bytes(Body)
        return {
            "ETag": f'"{len(self.objects)}"',
            "ServerSideEncryption": extra.get("ServerSideEncryption"),
            "SSEKMSKeyId": extra.get("SSEKMSKeyId"),
        }

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self.calls.append(("s3:GetObject", Bucket, Key, {}))
        if (Bucket, Key) not in self.objects:
            raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "missing"}}, "GetObject")
        return {"Body": io.BytesIO(self.objects[(Bucket, Key)]), "ETag": '"1"'}

    def delete_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self.calls.append(("s3:DeleteObject", Bucket, Key, {}))
        self.objects.pop((Bucket, Key), None)
        return {}


def lake_storage(client: MemoryS3) -> S3LakeStorage:
    return S3LakeStorage(
        VALUES["LakeBucket"], kms_key_id=VALUES["KmsKeyArn"], prefix=VALUES["LakePrefix"], client=client
    )


def put_context(role_arn: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The bucket-policy request context of a put made from inside the VPC over TLS."""
    return {
        "aws:SecureTransport": "true",
        "aws:SourceVpce": VALUES["VpceId"],
        "aws:PrincipalArn": role_arn,
        "s3:x-amz-server-side-encryption": extra.get("ServerSideEncryption"),
        "s3:x-amz-server-side-encryption-aws-kms-key-id": extra.get("SSEKMSKeyId"),
    }


def assert_calls_permitted(policy: Mapping[str, Any], role_arn: str, calls: Iterable[tuple]) -> None:
    bucket_policy = load_policy("s3-bucket-policy.json")
    for action, bucket, key, extra in calls:
        arn = f"arn:aws:s3:::{bucket}/{key}"
        assert allows(policy, action, arn), f"{action} {arn} is what the code does, but the role policy refuses it"
        if bucket == VALUES["LakeBucket"] and action == "s3:PutObject":
            assert denies(bucket_policy, action, arn, put_context(role_arn, extra)) == []


# ---------------------------------------------------------------- tests: templates and placeholders


@pytest.mark.parametrize("name", POLICY_FILES)
def test_every_placeholder_is_documented_and_filled(name: str) -> None:
    text = (AWS_DIR / name).read_text()
    readme = (AWS_DIR / "README.md").read_text()
    used = placeholders(text)
    assert used <= set(VALUES), f"{name}: placeholders {used - set(VALUES)} have no test value"
    assert not [p for p in used if f"`${{{p}}}`" not in readme], f"{name}: placeholders missing from the README table"
    filled = fill(text)
    assert "${" not in filled
    json.loads(filled)
    with pytest.raises(KeyError, match="LakeBucket"):
        fill(text, {k: v for k, v in VALUES.items() if k != "LakeBucket"})


@pytest.mark.parametrize("name", ["iam-training-role-policy.json", "iam-serving-role-policy.json"])
def test_role_policy_is_least_privilege_and_fits_a_managed_policy(name: str) -> None:
    policy = load_policy(name)
    assert policy_problems(policy) == []
    assert len("".join(json.dumps(policy).split())) <= MANAGED_POLICY_MAX_CHARS
    assert len({st["Sid"] for st in policy["Statement"]}) == len(policy["Statement"]), "Sids must be unique"


def _add_statement(**statement: Any) -> Callable[[dict[str, Any]], None]:
    return lambda policy: policy["Statement"].append({"Effect": "Allow", **statement})


def _edit(sid: str, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(policy: dict[str, Any]) -> None:
        statement = next(st for st in policy["Statement"] if st["Sid"] == sid)
        for key, value in changes.items():
            if value is None:
                statement.pop(key, None)
            else:
                statement[key] = value

    return mutate


@pytest.mark.parametrize(
    "mutate, problem",
    [
        (_add_statement(Action="s3:*", Resource=lake_arn("models/*")), "wildcard action s3:*"),
        (_add_statement(Action="kms:*", Resource=VALUES["KmsKeyArn"]), "wildcard action kms:*"),
        (_add_statement(Action="*", Resource="*"), "wildcard action *"),
        (_add_statement(Action="s3:Get*", Resource=lake_arn("models/*")), "wildcard action s3:Get*"),
        (_edit("LakeKeyViaS3", Resource="*"), "on wildcard resource *"),
        (_edit("StagingKeyGrantForVolumes", Resource="arn:aws:kms:eu-central-1:111122223333:key/*"), "named exactly"),
        (_add_statement(Action="s3:GetObject", Resource="arn:aws:s3:::*"), "on wildcard resource arn:aws:s3:::*"),
        (_edit("DescribeStopTagJobs", Resource="*"), "on wildcard resource *"),
        (
            _add_statement(Action="sagemaker:CreateEndpoint", Resource="arn:aws:sagemaker:eu-central-1:111122223333:*"),
            "on wildcard resource",
        ),
        (_edit("PassOwnRoleToSageMaker", Resource="*"), "iam:PassRole on ['*']"),
        (_edit("PassOwnRoleToSageMaker", Condition=None), "without iam:PassedToService"),
        (_edit("EcrPullTrainer", Resource=None), "needs Effect, Action and Resource"),
        (_edit("EcrLogin", Action=None, NotAction="iam:*"), "needs Effect, Action and Resource"),
        (_edit("JobLogs", Resource="arn:aws:logs:${Region}:x"), "unfilled placeholder"),
    ],
)
def test_the_policy_checker_catches_each_breach(mutate: Callable[[dict[str, Any]], None], problem: str) -> None:
    policy = copy.deepcopy(load_policy("iam-training-role-policy.json"))
    mutate(policy)
    assert any(problem in line for line in policy_problems(policy)), policy_problems(policy)


# ---------------------------------------------------------------- tests: lake scoping against the code's prefixes


def test_code_prefixes_are_where_the_grants_assume() -> None:
    assert ("models", f"datasets/{pipeline.CURATED}") == (MODELS_DIR, CURATED_DIR)
    assert RAW_SAMPLES_PREFIX == SAMPLES_PREFIX, "monitoring must read the samples where the gateway writes them"


def test_training_role_lake_grants_match_the_code() -> None:
    policy = load_policy("iam-training-role-policy.json")
    bucket = VALUES["LakeBucket"]
    assert s3_buckets(policy) == {bucket, VALUES["TrainingBucket"]}
    assert object_prefixes(policy, "s3:GetObject", bucket) == TRAINING_READS
    assert object_prefixes(policy, "s3:PutObject", bucket) == TRAINING_WRITES
    assert object_prefixes(policy, "s3:DeleteObject", bucket) == TRAINING_DELETES
    assert list_prefixes(policy, bucket) == {p for p in TRAINING_READS if not p.startswith(f"{MODELS_DIR}/")}
    assert allows(policy, "s3:GetObject", lake_arn(manifest_key(pipeline.CURATED, "gov-docs")))
    for dataset in UNCURATED_DATASETS:
        key = manifest_key(dataset, "gov-docs")
        assert not allows(policy, "s3:GetObject", lake_arn(key)), f"training must not read {key}"
        prefix = {"s3:prefix": f"{VALUES['LakePrefix']}/{key.rsplit('/', 1)[0]}/"}
        assert not allows(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}", prefix)
    for key in (
        f"{REGISTRY_PREFIX}m/events.jsonl",
        f"{DEPLOYMENT_PREFIX}/x/manifests.yaml",
        f"{BASE_MODEL_PREFIX}/v/a",
    ):
        assert not allows(policy, "s3:PutObject", lake_arn(key)), f"training must not write {key}"


def test_serving_role_lake_grants_match_the_code() -> None:
    policy = load_policy("iam-serving-role-policy.json")
    bucket = VALUES["LakeBucket"]
    assert s3_buckets(policy) == {bucket}
    assert object_prefixes(policy, "s3:GetObject", bucket) == SERVING_READS
    assert object_prefixes(policy, "s3:PutObject", bucket) == SERVING_WRITES
    assert object_prefixes(policy, "s3:DeleteObject", bucket) == set()
    assert list_prefixes(policy, bucket) == SERVING_READS
    for key in (manifest_key(pipeline.CURATED, "s"), f"{SFT_PREFIX}/t/current.json", AUDIT_LOG_KEY):
        assert not allows(policy, "s3:GetObject", lake_arn(key)), f"serving must not read {key}"
    for key in (f"{ADAPTER_PREFIX}/t/v/adapter/adapter_model.safetensors", AUDIT_LOG_KEY):
        assert not allows(policy, "s3:PutObject", lake_arn(key)), f"serving must not write {key}"


def test_serving_role_permits_what_the_gateway_writes() -> None:
    client = MemoryS3()
    storage = lake_storage(client)
    stored = FeedbackInbox(storage).submit(
        {"model": "banking77_intents", "prompt": "p", "response": "wrong", "correction": "right"}
    )
    recorder = SampleRecorder(storage, rate=1.0, seed=0, clock=lambda: datetime(2025, 3, 1, tzinfo=UTC))
    recorder.record("banking77_intents", "/v1/completions", {"prompt": "hello"}, "world")
    sample_key = recorder.flush()
    assert stored["key"].startswith(f"{FEEDBACK_INBOX}/") and sample_key.startswith(f"{SAMPLES_PREFIX}/")
    assert {c[0] for c in client.calls} == {"s3:PutObject"}
    assert_calls_permitted(load_policy("iam-serving-role-policy.json"), SERVING_ROLE_ARN, client.calls)


def test_training_role_permits_the_audit_append_every_materialisation_makes() -> None:
    client = MemoryS3()
    AuditLog(lake_storage(client)).append({"event": "materialization", "asset_key": "lora_adapter"})
    keys = {c[2] for c in client.calls}
    assert keys == {f"{VALUES['LakePrefix']}/{AUDIT_LOG_KEY}", f"{VALUES['LakePrefix']}/{AUDIT_HEAD_KEY}"}
    assert_calls_permitted(load_policy("iam-training-role-policy.json"), TRAINING_ROLE_ARN, client.calls)
    assert not allows(load_policy("iam-serving-role-policy.json"), "s3:PutObject", lake_arn(AUDIT_LOG_KEY))


@pytest.mark.parametrize("name", ["iam-training-role-policy.json", "iam-serving-role-policy.json"])
def test_kms_use_is_the_project_keys_through_s3(name: str) -> None:
    policy = load_policy(name)
    keys = {VALUES["KmsKeyArn"], VALUES["TrainingKmsKeyArn"]} if "training" in name else {VALUES["KmsKeyArn"]}
    kms = [st for st in policy["Statement"] if any(a.startswith("kms:") for a in as_list(st["Action"]))]
    assert kms and all(set(as_list(st["Resource"])) <= keys for st in kms)
    via_s3 = {"kms:ViaService": f"s3.{VALUES['Region']}.amazonaws.com"}
    assert allows(policy, "kms:GenerateDataKey", VALUES["KmsKeyArn"], via_s3)
    assert not allows(
        policy, "kms:Decrypt", VALUES["KmsKeyArn"], {"kms:ViaService": "lambda.eu-central-1.amazonaws.com"}
    )
    assert not allows(policy, "kms:Decrypt", VALUES["KmsKeyArn"]), "direct kms:Decrypt outside S3"


# ---------------------------------------------------------------- tests: SageMaker, Pipes staging, PassRole


def _job_name_prefixes_in_code() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        found |= set(re.findall(r'job_name=f"([a-z0-9]+)-', path.read_text()))
    return found


def test_training_job_grants_cover_exactly_the_job_names_the_assets_use() -> None:
    policy = load_policy("iam-training-role-policy.json")
    in_code = _job_name_prefixes_in_code()
    assert in_code, "no job_name=f'...' found in llm_assets; the scan needs updating"
    for st in policy["Statement"]:
        if any(a.startswith("sagemaker:") for a in as_list(st["Action"])):
            granted = {re.fullmatch(r".*:training-job/([a-z0-9]+)-\*", r).group(1) for r in as_list(st["Resource"])}
            assert granted == in_code, f"{st['Sid']}: grants {granted}, the assets name jobs {in_code}"
    job = f"arn:aws:sagemaker:{VALUES['Region']}:{VALUES['AccountId']}:training-job/"
    assert allows(policy, "sagemaker:DescribeTrainingJob", job + "cpt-0123456789ab-abcdef12")
    assert not allows(policy, "sagemaker:StopTrainingJob", job + "someone-elses-job")


def _request_context(request: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "sagemaker:InterContainerTrafficEncryption": str(request["EnableInterContainerTrafficEncryption"]).lower(),
        "sagemaker:OutputKmsKey": request["OutputDataConfig"].get("KmsKeyId"),
        "sagemaker:VolumeKmsKey": request["ResourceConfig"].get("VolumeKmsKeyId"),
        "sagemaker:VpcSubnets": request.get("VpcConfig", {}).get("Subnets"),
    }


def test_the_codes_training_request_meets_the_create_conditions_and_passes_only_its_own_role() -> None:
    policy = load_policy("iam-training-role-policy.json")
    settings = SageMakerTrainingSettings(
        role_arn=TRAINING_ROLE_ARN,
        image_uri=f"{VALUES['AccountId']}.dkr.ecr.{VALUES['Region']}.amazonaws.com/{VALUES['TrainerRepository']}:1",
        kms_key_id=VALUES["TrainingKmsKeyArn"],
        subnets=["subnet-0abc"],
        security_group_ids=["sg-0abc"],
    )
    root = f"s3://{VALUES['TrainingBucket']}/{VALUES['TrainingPrefix']}"
    request = sagemaker_training_request(
        settings,
        job_name="sft-banking77-intents-abcdef12",
        command=["python", "-m", "llm_assets.training.trainer", "--pipes"],
        input_channels={"model": f"{root}/sft-banking77-intents-abcdef12/input/model/"},
        output_s3_uri=root,
        checkpoint_s3_uri=f"{root}/sft-banking77-intents-abcdef12/checkpoints/",
        environment={},
    )
    arn = f"arn:aws:sagemaker:{VALUES['Region']}:{VALUES['AccountId']}:training-job/{request['TrainingJobName']}"
    assert allows(policy, "sagemaker:CreateTrainingJob", arn, _request_context(request))
    assert allows(policy, "iam:PassRole", request["RoleArn"], {"iam:PassedToService": "sagemaker.amazonaws.com"})
    assert not allows(policy, "iam:PassRole", request["RoleArn"], {"iam:PassedToService": "ec2.amazonaws.com"})
    assert not allows(policy, "iam:PassRole", SERVING_ROLE_ARN, {"iam:PassedToService": "sagemaker.amazonaws.com"})
    no_vpc = {k: v for k, v in request.items() if k != "VpcConfig"}
    assert not allows(policy, "sagemaker:CreateTrainingJob", arn, _request_context(no_vpc))
    clear = {**request, "EnableInterContainerTrafficEncryption": False}
    assert not allows(policy, "sagemaker:CreateTrainingJob", arn, _request_context(clear))


def test_training_role_permits_the_pipes_s3_transport() -> None:
    policy = load_policy("iam-training-role-policy.json")
    client = MemoryS3()
    bucket = VALUES["TrainingBucket"]
    job_root = f"{VALUES['TrainingPrefix']}/cpt-0123456789ab-abcdef12"
    injector = PipesS3ContextInjector(bucket=bucket, client=client, key_prefix=f"{job_root}/pipes/")
    with injector.inject_context({}):
        pass
    with PipesS3MessageReader(bucket=bucket, client=client).get_params() as params:
        message = f"{params['key_prefix']}/1.json"
    client.put_object(Bucket=bucket, Key=message, Body=b"{}")
    client.get_object(Bucket=bucket, Key=message)
    assert {c[0] for c in client.calls} == {"s3:PutObject", "s3:DeleteObject", "s3:GetObject"}
    assert_calls_permitted(policy, TRAINING_ROLE_ARN, client.calls)
    assert not allows(policy, "s3:PutObject", f"arn:aws:s3:::{bucket}/elsewhere/1.json")
    assert not allows(policy, "s3:DeleteObject", f"arn:aws:s3:::{bucket}/{job_root}/output/model.tar.gz")


# ---------------------------------------------------------------- tests: the lake bucket policy


def test_bucket_policy_has_the_three_denies() -> None:
    assert bucket_policy_problems(load_policy("s3-bucket-policy.json")) == []


@pytest.mark.parametrize(
    "sid, change, problem",
    [
        ("DenyInsecureTransport", {"Condition": {"Bool": {"aws:SecureTransport": "true"}}}, "SecureTransport"),
        ("DenyObjectWritesWithoutSseKms", {"Effect": "Allow"}, "only denies"),
        ("DenyObjectWritesWithAnotherKmsKey", {"Condition": {"StringNotEquals": {}}}, "not the project key"),
        ("DenyAccessOutsideProjectVpcEndpointExceptBreakGlass", {"Action": "s3:GetObject"}, "aws:SourceVpce"),
        (
            "DenyAccessOutsideProjectVpcEndpointExceptBreakGlass",
            {"Condition": {"StringNotEquals": {"aws:SourceVpce": VALUES["VpceId"]}}},
            "break-glass",
        ),
        ("DenyInsecureTransport", {"Principal": {"AWS": VALUES["BreakGlassRoleArn"]}}, "Principal must be '*'"),
    ],
)
def test_the_bucket_policy_checker_catches_each_breach(sid: str, change: dict[str, Any], problem: str) -> None:
    policy = copy.deepcopy(load_policy("s3-bucket-policy.json"))
    next(st for st in policy["Statement"] if st["Sid"] == sid).update(change)
    assert any(problem in line for line in bucket_policy_problems(policy)), bucket_policy_problems(policy)


def test_bucket_policy_admits_the_lake_writer_and_refuses_the_rest() -> None:
    policy = load_policy("s3-bucket-policy.json")
    client = MemoryS3()
    lake_storage(client).write_bytes(f"{ADAPTER_PREFIX}/t/v/adapter/adapter_config.json", b"{}")
    [(action, bucket, key, extra)] = client.calls
    arn = f"arn:aws:s3:::{bucket}/{key}"
    good = put_context(TRAINING_ROLE_ARN, extra)
    assert denies(policy, action, arn, good) == []
    assert denies(policy, action, arn, {**good, "aws:SecureTransport": "false"}) == ["DenyInsecureTransport"]
    unencrypted = {k: v for k, v in good.items() if not k.startswith("s3:x-amz")}
    assert denies(policy, action, arn, unencrypted) == [
        "DenyObjectWritesWithoutSseKms",
        "DenyObjectWritesWithAnotherKmsKey",
    ]
    other_key = {**good, "s3:x-amz-server-side-encryption-aws-kms-key-id": VALUES["TrainingKmsKeyArn"]}
    assert denies(policy, action, arn, other_key) == ["DenyObjectWritesWithAnotherKmsKey"]
    outside = {**good, "aws:SourceVpce": None}
    assert denies(policy, "s3:GetObject", arn, outside) == ["DenyAccessOutsideProjectVpcEndpointExceptBreakGlass"]
    assert denies(policy, "s3:GetObject", arn, {**outside, "aws:PrincipalArn": VALUES["BreakGlassRoleArn"]}) == []


# ---------------------------------------------------------------- tests: alarms


def _resolve(node: Any, parameters: Mapping[str, Any]) -> Any:
    """Ref and Fn::Sub against parameter values, the way CloudFormation would, so botocore can validate."""
    if isinstance(node, dict):
        if set(node) == {"Ref"}:
            return parameters[node["Ref"]]
        if set(node) == {"Fn::Sub"}:
            return string.Template(node["Fn::Sub"]).substitute({k: str(v) for k, v in parameters.items()})
        return {k: _resolve(v, parameters) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, parameters) for v in node]
    return node


def test_alarms_cover_errors_p99_latency_and_spend() -> None:
    template = load_alarms()
    assert alarm_problems(template) == []
    params = template["Parameters"]
    assert params["VariantName"]["Default"] == VARIANT_NAME
    assert params["ErrorRateThreshold"]["Default"] == DEFAULT_SLO.max_error_rate
    assert params["ModelLatencyP99ThresholdMicroseconds"]["Default"] == DEFAULT_SLO.p99_latency_s * 1_000_000
    errors = template["Resources"]["EndpointErrorRateAlarm"]["Properties"]
    assert (errors["Statistic"], errors["ComparisonOperator"]) == ("Average", "GreaterThanThreshold")
    spend = template["Resources"]["SpendRateSpikeAlarm"]
    assert spend["Condition"] == "InBillingRegion"
    assert template["Conditions"]["InBillingRegion"] == {"Fn::Equals": [{"Ref": "AWS::Region"}, "us-east-1"]}


def test_alarms_resolve_to_valid_put_metric_alarm_requests() -> None:
    template = load_alarms()
    values = {name: p.get("Default") for name, p in template["Parameters"].items()}
    values |= {
        "AlarmTopicArn": f"arn:aws:sns:us-east-1:{VALUES['AccountId']}:llm-assets-oncall",
        "EndpointName": VALUES["EndpointName"],
        "AWS::Region": "us-east-1",
    }
    shape = botocore.session.get_session().get_service_model("cloudwatch").operation_model("PutMetricAlarm").input_shape
    for name, resource in template["Resources"].items():
        request = _resolve(resource["Properties"], values)
        report = ParamValidator().validate(request, shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"
        assert "${" not in json.dumps(request)


@pytest.mark.parametrize(
    "resource, change, problem",
    [
        ("EndpointModelLatencyP99Alarm", {"ExtendedStatistic": "p90"}, "p99"),
        ("EndpointErrorRateAlarm", {"AlarmActions": []}, "AlarmActions"),
        ("EndpointErrorRateAlarm", {"TreatMissingData": "zero"}, "TreatMissingData"),
        ("EndpointErrorRateAlarm", {"MetricName": "Invocation4XXErrors"}, "Invocation5XXErrors"),
        ("SpendRateSpikeAlarm", {"Metrics": []}, "EstimatedCharges"),
        ("SpendRateSpikeAlarm", {"DatapointsToAlarm": 2}, "exceeds EvaluationPeriods"),
    ],
)
def test_the_alarm_checker_catches_each_breach(resource: str, change: dict[str, Any], problem: str) -> None:
    template = copy.deepcopy(load_alarms())
    template["Resources"][resource]["Properties"].update(change)
    assert any(problem in line for line in alarm_problems(template)), alarm_problems(template)


# ---------------------------------------------------------------- tests: the runbook names real commands


def _shell_lines(markdown: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", markdown, flags=re.DOTALL)
    return [line.split("#")[0].strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def test_runbook_llm_assets_commands_and_options_exist() -> None:
    lines = [line for line in _shell_lines((AWS_DIR / "README.md").read_text()) if line.startswith("llm-assets ")]
    assert {" ".join(line.split()[:3]) for line in lines} >= {
        "llm-assets registry rollback",
        "llm-assets serve stop",
        "llm-assets audit verify",
    }
    for line in lines:
        words = line.split()[1:]
        command: click.Command = cli_main
        with click.Context(cli_main) as ctx:
            while isinstance(command, click.Group) and words and not words[0].startswith("-"):
                sub = command.get_command(ctx, words.pop(0))
                assert sub is not None, f"README: `{line}` names no llm-assets command"
                command = sub
        options = {opt for param in command.params for opt in param.opts}
        used = {w for w in words if w.startswith("--")}
        assert used <= options, f"README: `{line}` uses {used - options}; the command takes {options}"
        required = {p.opts[0] for p in command.params if isinstance(p, click.Option) and p.required}
        assert required <= used, f"README: `{line}` leaves out required {required - used}"


def test_runbook_admin_route_is_the_gateways() -> None:
    readme = (AWS_DIR / "README.md").read_text()
    assert (
        'curl -sS -X DELETE -H "Authorization: Bearer $LLM_ASSETS_SERVE_ADMIN_KEY" "http://$HOST/admin/adapters/'
        in readme
    )
    app = Gateway(GatewaySettings(api_keys=["k"], routes={})).app()
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    assert ("DELETE", "/admin/adapters/{name}") in routes
