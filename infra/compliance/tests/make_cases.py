"""Build the offline terraform-compliance cases for infra/compliance/*.feature.

The Google provider cannot be downloaded everywhere this project is tested, so the
policies are tested the way terraform-compliance's own examples are: against
committed plan JSON files. ``base_resources`` mirrors what ``terraform show -json``
prints for infra/ planned with infra/terraform.tfvars.example: every resource being
created, values known at plan time in ``change.after`` and ``planned_values``, values
known only after apply (service account emails, ids) in ``after_unknown``, and the
references between resources in ``configuration``. Provider attributes no policy
looks at are left out.

Every failing case is that plan with ONE change, named after the policy it breaks;
``FAILING`` also records which scenarios it must fail and text its failure must
contain. Passing cases are other legitimate settings of the module's variables.

    python infra/compliance/tests/make_cases.py          # rewrite the cases
    python infra/compliance/tests/make_cases.py --check  # exit 1 if they are stale

Cases are written one line each, as ``terraform show -json`` writes them:
terraform-compliance reads only one line of a plan file.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CASES_DIR = Path(__file__).resolve().parent
PASSING_DIR = CASES_DIR / "passing"
FAILING_DIR = CASES_DIR / "failing"
EXPECTED_FILE = CASES_DIR / "expected.json"

# The values of infra/terraform.tfvars.example, and what the data sources return.
PROJECT = "histo-demo-project"
PROJECT_NUMBER = "123456789012"
PREFIX = "histo-demo"
REGION = "us-central1"
MODEL_NAME = "histo-cnn"
INVOKER = "user:someone@example.com"
LABELS = {"app": "histoscreen", "managed-by": "terraform", "owner": "pathology-ml"}
GCS_AGENT = f"service-{PROJECT_NUMBER}@gs-project-accounts.iam.gserviceaccount.com"
SOURCE_OBJECT = "histoscreen-function-0b5c3e2f6d1a4e8f9c7b2a1d0e3f4a5b.zip"
KMS_KEY = f"projects/{PROJECT}/locations/{REGION}/keyRings/histoscreen/cryptoKeys/buckets"
PROVIDER = "registry.terraform.io/hashicorp/google"

# Scenario names, as written in the .feature files.
UNIFORM = "Buckets use uniform bucket-level access"
PREVENTION = "Buckets enforce public access prevention"
MODELS_VERSIONING = "The models bucket keeps every object version"
ACCESS_LOGS = "Buckets send usage logs to the access-logs bucket"
PUBLIC_MEMBER = "No IAM member grant goes to allUsers or allAuthenticatedUsers"
PUBLIC_BINDING = "No IAM binding grants to allUsers or allAuthenticatedUsers"
NO_ACLS = "Buckets and objects have no ACLs (uniform access decides)"
PRIMITIVE = "No primitive roles (owner, editor, viewer)"
AUTHORITATIVE = "Project IAM is only ever added to, never replaced"
LABEL = "Resources carry the <key> label"
PUBLIC_INVOKER = "Nobody outside the project can invoke a function through <invoker_resource>"
INTERNAL_ONLY = "The upload-triggered function accepts internal traffic only"
NOTIFY_FINALIZE = "Upload notifications are sent for new objects only"
NOTIFY_JSON = "Upload notifications carry the object's JSON API resource"
PUBSUB_PROJECT = "Project-level Pub/Sub roles go to the Cloud Storage service agent alone"
TOPIC_PUBLISH_ONLY = "Grants on a topic only let it be published to"


def ref(*references: str) -> dict[str, list[str]]:
    """A configuration expression that refers to other objects."""
    return {"references": list(references)}


def const(value: Any) -> dict[str, Any]:
    """A configuration expression with a literal value."""
    return {"constant_value": value}


def resource_ref(address: str, attribute: str) -> dict[str, list[str]]:
    """How terraform records `address.attribute` in an expression.

    An instance address (`type.name["key"]`) also refers to its whole resource.
    """
    whole = address.split("[", 1)[0]
    return ref(f"{address}.{attribute}", address, *([whole] if whole != address else []))


BUCKETS = "google_storage_bucket.buckets"
FUNCTIONS = "google_cloudfunctions2_function.functions"
ON_UPLOAD = f'{FUNCTIONS}["on_upload"]'


def bucket_address(key: str) -> str:
    """The address of one instance of buckets.tf's for_each, e.g. `...buckets["uploads"]`."""
    return f'{BUCKETS}["{key}"]'


SA = "google_service_account.pipeline"


def sa_ref(account: str) -> dict[str, list[str]]:
    """An expression using google_service_account.pipeline["account"].email."""
    return ref(f'{SA}["{account}"].email', f'{SA}["{account}"]', SA)


@dataclass
class Resource:
    """One resource instance in the plan, with the configuration block it came from."""

    type: str
    name: str
    values: dict[str, Any]
    unknown: dict[str, Any] = field(default_factory=dict)
    expressions: dict[str, Any] = field(default_factory=dict)
    index: str | int | None = None
    iteration: dict[str, Any] = field(default_factory=dict)  # for_each / count expression
    mode: str = "managed"

    @property
    def config_address(self) -> str:
        return f"{'data.' if self.mode == 'data' else ''}{self.type}.{self.name}"

    @property
    def address(self) -> str:
        if self.index is None:
            return self.config_address
        return f"{self.config_address}[{json.dumps(self.index)}]"

    def head(self) -> dict[str, Any]:
        head = {"address": self.address, "mode": self.mode, "type": self.type, "name": self.name}
        if self.index is not None:
            head["index"] = self.index
        return {**head, "provider_name": PROVIDER}


# --- The resources of infra/*.tf --------------------------------------------------


def labelled(values: dict[str, Any], labels: dict[str, str] | None) -> dict[str, Any]:
    """values with labels as provider 6 plans them (labels, effective_ and terraform_labels)."""
    planned = {"goog-terraform-provisioned": "true", **(labels or {})}
    return {
        **values,
        "labels": None if labels is None else dict(labels),
        "effective_labels": planned,
        "terraform_labels": dict(planned),
    }


def lifecycle_rule(action: str, storage_class: str = "", **condition: Any) -> dict[str, Any]:
    return {"action": [{"type": action, "storage_class": storage_class}], "condition": [condition]}


def bucket(role: str, versioned: bool, rules: list[dict], logged: bool = True, **kw: Any):
    """One instance of buckets.tf's google_storage_bucket.buckets.

    kw: kms_key, labels, purpose (the purpose label when it is not the role).

    The bucket blocks are one for_each over local.bucket_specs, so every instance
    shares one configuration block; versioning, logging, lifecycle rules and
    encryption are dynamic blocks, which terraform does not list among expressions.
    """
    key = role.replace("-", "_")
    purpose = kw.get("purpose", role)
    values = {
        "name": f"{PREFIX}-{role}",
        "location": REGION.upper(),
        "force_destroy": False,
        "uniform_bucket_level_access": True,
        "public_access_prevention": "enforced",
        "versioning": [{"enabled": True}] if versioned else [],
        "lifecycle_rule": rules,
        "logging": [{"log_bucket": f"{PREFIX}-access-logs", "log_object_prefix": f"{role}/"}]
        if logged
        else [],
        "encryption": [{"default_kms_key_name": kw["kms_key"]}] if kw.get("kms_key") else [],
    }
    expressions = {
        "name": ref("local.bucket_names", "each.key"),
        "labels": ref("local.labels", "each.value.purpose", "each.value"),
        "uniform_bucket_level_access": const(True),
        "public_access_prevention": const("enforced"),
    }
    unknown = {"id": True, "project_number": True, "self_link": True, "url": True}
    return Resource(
        "google_storage_bucket",
        "buckets",
        labelled(values, {**kw.get("labels", LABELS), "purpose": purpose}),
        unknown,
        expressions,
        key,
        {"for_each_expression": ref("local.bucket_specs")},
    )


def iam(kind: str, local_name: str, role: str, member: str | None = None, **kw: Any) -> Resource:
    """An IAM grant. member None: a service account's email, known only after apply.

    kw: members (list), index, expressions, iteration, unknown (the scope's attributes
    known only after apply, e.g. {"topic": True}), and the scope (bucket, project...).
    """
    special = ("members", "index", "expressions", "iteration", "unknown")
    values = {key: value for key, value in kw.items() if key not in special}
    values.update(role=role, condition=[])
    unknown = {"etag": True, "id": True, **kw.get("unknown", {})}
    if "members" in kw:
        values["members"] = kw["members"]
    elif member is None:
        unknown["member"] = True
    else:
        values["member"] = member
    return Resource(
        kind,
        local_name,
        values,
        unknown,
        kw.get("expressions", {}),
        kw.get("index"),
        kw.get("iteration", {}),
    )


SERVICE_ACCOUNTS = ("function", "dataflow", "training", "build")

BUCKET_GRANTS = {  # for_each key: (account, bucket, role), as in iam.tf
    "function-reads-uploads": ("function", "uploads", "roles/storage.objectViewer"),
    "function-writes-uploads": ("function", "uploads", "roles/storage.objectUser"),
    "function-reads-models": ("function", "models", "roles/storage.objectViewer"),
    "dataflow-reads-uploads": ("dataflow", "uploads", "roles/storage.objectViewer"),
    "dataflow-reads-models": ("dataflow", "models", "roles/storage.objectViewer"),
    "dataflow-writes-results": ("dataflow", "results", "roles/storage.objectAdmin"),
    "dataflow-writes-temp": ("dataflow", "dataflow-temp", "roles/storage.objectAdmin"),
    "training-reads-training-data": ("training", "training-data", "roles/storage.objectViewer"),
    "training-reads-models": ("training", "models", "roles/storage.objectViewer"),
    "training-writes-models": ("training", "models", "roles/storage.objectCreator"),
    "build-reads-function-source": ("build", "function-source", "roles/storage.objectViewer"),
}

PROJECT_GRANTS = {  # for_each key: (account, role)
    "function-receives-events": ("function", "roles/eventarc.eventReceiver"),
    "dataflow-runs-workers": ("dataflow", "roles/dataflow.worker"),
    "build-writes-logs": ("build", "roles/logging.logWriter"),
}

APIS = [
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "dataflow.googleapis.com",
    "eventarc.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "storage.googleapis.com",
]


def function(entry_point: str, ingress: str, labels: dict | None) -> Resource:
    """One instance of function.tf's google_cloudfunctions2_function.functions.

    Keyed by entry point; on_upload alone has the (dynamic) event_trigger block.
    """
    triggered = entry_point == "on_upload"
    source = "google_storage_bucket_object.function_source"
    service_config = {
        "available_cpu": "2",
        "available_memory": "4Gi",
        "timeout_seconds": 120,
        "min_instance_count": 0,
        "max_instance_count": 10,
        "max_instance_request_concurrency": 1,
        "ingress_settings": ingress,
        "all_traffic_on_latest_revision": True,
        "environment_variables": {
            "MODEL_URI": f"gs://{PREFIX}-models/{MODEL_NAME}",
            "MAX_IMAGE_PIXELS": "25000000",
            "LOG_LEVEL": "INFO",
        },
    }
    storage_source = {"bucket": f"{PREFIX}-function-source", "object": SOURCE_OBJECT}
    values = {
        "name": f"{PREFIX}-{entry_point.replace('_', '-')}",
        "location": REGION,
        "build_config": [
            {
                "runtime": "python311",
                "entry_point": entry_point,
                "source": [{"storage_source": [storage_source]}],
            }
        ],
        "service_config": [service_config],
        "event_trigger": [],
    }
    unknown = {
        "id": True,
        "url": True,
        "build_config": [{"service_account": True, "docker_repository": True}],
        "service_config": [{"service": True, "service_account_email": True, "uri": True}],
    }
    expressions: dict[str, Any] = {
        "name": ref("var.name_prefix", "each.key"),
        "description": ref("each.value.description", "each.value"),
        "labels": ref("local.labels"),
        "build_config": [
            {
                "entry_point": ref("each.key"),
                "service_account": ref(f'{SA}["build"].id', f'{SA}["build"]', SA),
                "docker_repository": resource_ref(
                    "google_artifact_registry_repository.images", "id"
                ),
                "source": [{"storage_source": [{"object": resource_ref(source, "name")}]}],
            }
        ],
        "service_config": [
            {
                "ingress_settings": ref("each.value.ingress_settings", "each.value"),
                "service_account_email": ref("local.function_service_account"),
            }
        ],
    }
    if triggered:
        values["event_trigger"] = [
            {
                "trigger_region": REGION,
                "event_type": "google.cloud.storage.object.v1.finalized",
                "retry_policy": "RETRY_POLICY_RETRY",
                "event_filters": [{"attribute": "bucket", "value": f"{PREFIX}-uploads"}],
            }
        ]
        unknown["event_trigger"] = [{"service_account_email": True, "pubsub_topic": True}]
    return Resource(
        "google_cloudfunctions2_function",
        "functions",
        labelled(values, labels),
        unknown,
        expressions,
        entry_point,
        {"for_each_expression": ref("local.deployed_functions")},
    )


TOPIC = "google_pubsub_topic.uploads"
SUBSCRIPTION = "google_pubsub_subscription.uploads_stream"
NOTIFICATION = "google_storage_notification.uploads"
GCS_AGENT_REF = resource_ref("data.google_storage_project_service_account.gcs", "email_address")
STREAM_READER_ROLES = ("roles/pubsub.subscriber", "roles/pubsub.viewer")


def stream_resources(labels: dict[str, str], kms_key: str | None) -> list[Resource]:
    """The resources of stream.tf: topic, notification, subscription and their grants.

    Ids of new Pub/Sub resources are known only after apply, so every reference to
    the topic or the subscription is unknown in the plan.
    """
    topic_id = resource_ref(TOPIC, "id")
    return [
        Resource(
            "google_pubsub_topic",
            "uploads",
            labelled({"name": f"{PREFIX}-uploads", "kms_key_name": kms_key}, labels),
            {"id": True},
            {
                "name": ref("var.name_prefix"),
                "labels": ref("local.labels"),
                "kms_key_name": ref("var.kms_key_name"),
            },
        ),
        iam(
            "google_pubsub_topic_iam_member",
            "gcs_publishes_uploads",
            "roles/pubsub.publisher",
            f"serviceAccount:{GCS_AGENT}",
            unknown={"topic": True},
            expressions={"topic": topic_id, "member": GCS_AGENT_REF},
        ),
        Resource(
            "google_storage_notification",
            "uploads",
            {
                "bucket": f"{PREFIX}-uploads",
                "payload_format": "JSON_API_V1",
                "event_types": ["OBJECT_FINALIZE"],
                "custom_attributes": None,
                "object_name_prefix": None,
            },
            {"id": True, "notification_id": True, "self_link": True, "topic": True},
            {
                "bucket": resource_ref(UPLOADS, "name"),
                "topic": topic_id,
                "payload_format": const("JSON_API_V1"),
                "event_types": const(["OBJECT_FINALIZE"]),
            },
        ),
        Resource(
            "google_pubsub_subscription",
            "uploads_stream",
            labelled(
                {
                    "name": f"{PREFIX}-uploads-stream",
                    "ack_deadline_seconds": 60,
                    "message_retention_duration": "604800s",
                    "expiration_policy": [{"ttl": ""}],
                },
                labels,
            ),
            {"id": True, "topic": True},
            {
                "name": ref("var.name_prefix"),
                "topic": topic_id,
                "labels": ref("local.labels"),
                "message_retention_duration": ref("var.stream_message_retention_days"),
            },
        ),
        *(
            iam(
                "google_pubsub_subscription_iam_member",
                "dataflow_reads_uploads",
                role,
                index=role,
                unknown={"subscription": True},
                iteration={"for_each_expression": const(list(STREAM_READER_ROLES))},
                expressions={
                    "subscription": resource_ref(SUBSCRIPTION, "id"),
                    "member": sa_ref("dataflow"),
                },
            )
            for role in STREAM_READER_ROLES
        ),
    ]


def training_job(labels: dict[str, str]) -> Resource:
    """The google_cloud_run_v2_job of training.tf."""
    container = {
        "image": f"{REGION}-docker.pkg.dev/{PROJECT}/histoscreen/training:latest",
        "args": [
            *("--data", f"gs://{PREFIX}-training-data/", "--output", f"gs://{PREFIX}-models/"),
            *("--model-name", MODEL_NAME),
        ],
        "env": [{"name": "LOG_LEVEL", "value": "INFO"}],
        "resources": [{"limits": {"cpu": "4", "memory": "16Gi"}}],
    }
    task = {"containers": [container], "max_retries": 0, "timeout": "21600s"}
    values = {
        "name": f"{PREFIX}-training",
        "location": REGION,
        "template": [{"labels": dict(labels), "task_count": 1, "template": [task]}],
    }
    args = [resource_ref(bucket_address(key), "name") for key in ("training_data", "models")]
    expressions = {
        "labels": ref("local.labels"),
        "template": [
            {
                "template": [
                    {
                        "service_account": sa_ref("training"),
                        "containers": [{"args": ref(*(r for a in args for r in a["references"]))}],
                    }
                ]
            }
        ],
    }
    unknown = {"id": True, "template": [{"template": [{"service_account": True}]}]}
    return Resource(
        "google_cloud_run_v2_job", "training", labelled(values, labels), unknown, expressions
    )


def base_resources(
    http_function: bool = True, kms_key: str | None = None, labels: dict[str, str] = LABELS
) -> list[Resource]:
    """Every resource infra/ plans to create."""
    repository = "google_artifact_registry_repository.images"
    keep_noncurrent_90_days = lifecycle_rule("Delete", days_since_noncurrent_time=90)
    common = {"kms_key": kms_key, "labels": labels}
    nearline_30_delete_365 = [
        lifecycle_rule("SetStorageClass", "NEARLINE", age=30),
        lifecycle_rule("Delete", age=365),
    ]
    resources = [
        bucket("uploads", True, [keep_noncurrent_90_days], **common),
        bucket("models", True, [keep_noncurrent_90_days], **common),
        bucket("training-data", True, [keep_noncurrent_90_days], **common),
        bucket("results", False, nearline_30_delete_365, **common),
        bucket(
            "dataflow-temp",
            False,
            [lifecycle_rule("Delete", age=7)],
            purpose="dataflow-scratch",
            **common,
        ),
        bucket("function-source", False, [], **common),
        bucket("access-logs", False, [lifecycle_rule("Delete", age=90)], logged=False, **common),
        iam(
            "google_storage_bucket_iam_member",
            "access_logs_writer",
            "roles/storage.objectCreator",
            "group:cloud-storage-analytics@google.com",
            bucket=f"{PREFIX}-access-logs",
            expressions={"bucket": resource_ref(bucket_address("access_logs"), "name")},
        ),
        Resource(
            "google_storage_bucket_object",
            "function_source",
            {
                "name": SOURCE_OBJECT,
                "bucket": f"{PREFIX}-function-source",
                "source": "../build/function-source.zip",
                "content_type": "application/zip",
            },
            {"id": True, "md5hash": True, "generation": True},
            {"bucket": resource_ref(bucket_address("function_source"), "name")},
        ),
        *(
            Resource(
                "google_service_account",
                "pipeline",
                {
                    "account_id": f"{PREFIX}-{account}",
                    "display_name": f"{PREFIX} {account}",
                    "project": PROJECT,
                },
                {"email": True, "id": True, "member": True, "name": True, "unique_id": True},
                {"account_id": ref("var.name_prefix", "each.key")},
                account,
                {"for_each_expression": ref("local.service_accounts")},
            )
            for account in SERVICE_ACCOUNTS
        ),
        *(
            iam(
                "google_storage_bucket_iam_member",
                "pipeline",
                role,
                bucket=f"{PREFIX}-{bucket_role}",
                index=key,
                iteration={"for_each_expression": ref("local.bucket_grants")},
                expressions={
                    "bucket": ref(BUCKETS, "each.value.bucket", "each.value"),
                    "member": ref(SA, "each.value.account", "each.value"),
                },
            )
            for key, (_, bucket_role, role) in BUCKET_GRANTS.items()
        ),
        *(
            iam(
                "google_project_iam_member",
                "pipeline",
                role,
                project=PROJECT,
                index=key,
                iteration={"for_each_expression": ref("local.project_grants")},
                expressions={"member": ref(SA, "each.value.account", "each.value")},
            )
            for key, (_, role) in PROJECT_GRANTS.items()
        ),
        iam(
            "google_project_iam_member",
            "gcs_publishes_events",
            "roles/pubsub.publisher",
            f"serviceAccount:{GCS_AGENT}",
            project=PROJECT,
            expressions={"member": GCS_AGENT_REF},
        ),
        *(
            Resource(
                "google_project_service",
                "apis",
                {"project": PROJECT, "service": api, "disable_on_destroy": False},
                {"id": True},
                {"service": ref("each.value")},
                api,
                {"for_each_expression": ref("var.enable_apis", "local.apis")},
            )
            for api in APIS
        ),
        Resource(
            "google_artifact_registry_repository",
            "images",
            labelled(
                {
                    "repository_id": "histoscreen",
                    "location": REGION,
                    "format": "DOCKER",
                    "kms_key_name": kms_key,
                },
                labels,
            ),
            {"id": True, "name": True},
            {"labels": ref("local.labels"), "kms_key_name": ref("var.kms_key_name")},
        ),
        *(
            iam(
                "google_artifact_registry_repository_iam_member",
                "image_readers",
                "roles/artifactregistry.reader",
                location=REGION,
                index=reader,
                iteration={"for_each_expression": const(["training", "dataflow"])},
                expressions={"repository": resource_ref(repository, "name")},
            )
            for reader in ("dataflow", "training")
        ),
        iam(
            "google_artifact_registry_repository_iam_member",
            "function_image_writer",
            "roles/artifactregistry.writer",
            location=REGION,
            expressions={"repository": resource_ref(repository, "name"), "member": sa_ref("build")},
        ),
        training_job(labels),
        function("on_upload", "ALLOW_INTERNAL_ONLY", labels),
        *stream_resources(labels, kms_key),
        iam(
            "google_cloud_run_v2_service_iam_member",
            "on_upload_trigger_invoker",
            "roles/run.invoker",
            location=REGION,
            name=f"{PREFIX}-on-upload",
            expressions={
                "name": resource_ref(ON_UPLOAD, "name"),
                "member": ref("local.function_service_account"),
            },
        ),
    ]
    if http_function:
        resources += [
            function("predict_http", "ALLOW_INTERNAL_ONLY", labels),
            http_invoker(INVOKER),
        ]
    return resources


def http_invoker(member: str) -> Resource:
    """One google_cloud_run_v2_service_iam_member.predict_http_invokers instance."""
    return iam(
        "google_cloud_run_v2_service_iam_member",
        "predict_http_invokers",
        "roles/run.invoker",
        member,
        location=REGION,
        name=f"{PREFIX}-predict-http",
        index=member,
        iteration={
            "for_each_expression": ref("var.deploy_http_function", "var.http_function_invokers")
        },
        expressions={"name": resource_ref(f'{FUNCTIONS}["predict_http"]', "name")},
    )


DATA_SOURCES = [
    Resource(
        "google_storage_project_service_account",
        "gcs",
        {"email_address": GCS_AGENT, "member": f"serviceAccount:{GCS_AGENT}", "project": PROJECT},
        mode="data",
    ),
]


def plan_json(resources: list[Resource], variables: dict[str, Any]) -> dict[str, Any]:
    """What `terraform show -json tfplan` prints when every resource is to be created."""
    blocks: dict[str, dict[str, Any]] = {}
    for resource in [*resources, *DATA_SOURCES]:
        blocks.setdefault(
            resource.config_address,
            {
                "address": resource.config_address,
                "mode": resource.mode,
                "type": resource.type,
                "name": resource.name,
                "provider_config_key": "google",
                "expressions": copy.deepcopy(resource.expressions),
                "schema_version": 0,
                **resource.iteration,
            },
        )

    def instance(resource: Resource) -> dict[str, Any]:
        values = copy.deepcopy(resource.values)
        return {**resource.head(), "schema_version": 0, "values": values, "sensitive_values": {}}

    return {
        "format_version": "1.2",
        "terraform_version": "1.11.4",
        "variables": {name: {"value": value} for name, value in sorted(variables.items())},
        "planned_values": {"root_module": {"resources": [instance(r) for r in resources]}},
        "resource_changes": [
            {
                **resource.head(),
                "change": {
                    "actions": ["create"],
                    "before": None,
                    "after": copy.deepcopy(resource.values),
                    "after_unknown": copy.deepcopy(resource.unknown),
                    "before_sensitive": False,
                    "after_sensitive": {},
                },
            }
            for resource in resources
        ],
        "prior_state": {
            "format_version": "1.0",
            "terraform_version": "1.11.4",
            "values": {"root_module": {"resources": [instance(d) for d in DATA_SOURCES]}},
        },
        "configuration": {
            "provider_config": {
                "google": {
                    "name": "google",
                    "full_name": PROVIDER,
                    "version_constraint": "~> 6.0",
                    "expressions": {
                        "project": ref("var.project_id"),
                        "region": ref("var.region"),
                    },
                }
            },
            "root_module": {"resources": list(blocks.values())},
        },
        "timestamp": "2026-11-29T12:00:00Z",
        "applyable": True,
        "complete": True,
        "errored": False,
    }


VARIABLES: dict[str, Any] = {
    "project_id": PROJECT,
    "region": REGION,
    "name_prefix": PREFIX,
    "labels": {"owner": "pathology-ml"},
    "model_name": MODEL_NAME,
    "kms_key_name": None,
    "deploy_http_function": True,
    "http_function_invokers": [INVOKER],
    "http_function_ingress": "ALLOW_INTERNAL_ONLY",
    "stream_message_retention_days": 7,
    "stream_model_poll_seconds": 60,
}


def base_plan() -> dict[str, Any]:
    """The plan of infra/ with terraform.tfvars.example: the base of every failing case."""
    return plan_json(base_resources(), VARIABLES)


# --- One change per failing case ----------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def set_value(address: str, key: str, value: Any, within: tuple[str | int, ...] = ()):
    """Mutation: one resource plans `key = value` (inside the nested block `within`)."""

    def mutate(plan: dict[str, Any]) -> None:
        entries = [
            *(
                e["values"]
                for e in plan["planned_values"]["root_module"]["resources"]
                if e["address"] == address
            ),
            *(e["change"]["after"] for e in plan["resource_changes"] if e["address"] == address),
        ]
        if len(entries) != 2:
            raise KeyError(f"{address} is not in the base plan")
        for values in entries:
            for step in within:
                values = values[step]
            values[key] = copy.deepcopy(value)

    return mutate


def add_resource(resource: Resource) -> Mutation:
    """Mutation: someone added this resource to the .tf."""

    def mutate(plan: dict[str, Any]) -> None:
        extra = plan_json([resource], {})
        plan["planned_values"]["root_module"]["resources"] += extra["planned_values"][
            "root_module"
        ]["resources"]
        plan["resource_changes"] += extra["resource_changes"]
        blocks = plan["configuration"]["root_module"]["resources"]
        if all(block["address"] != resource.config_address for block in blocks):
            blocks.append(extra["configuration"]["root_module"]["resources"][0])

    return mutate


@dataclass(frozen=True)
class FailingCase:
    """The base plan changed by `mutations`: it must fail exactly `scenarios`."""

    description: str
    mutations: tuple[Mutation, ...]
    scenarios: tuple[str, ...]
    messages: tuple[str, ...]  # text the failure output must contain


UPLOADS, MODELS, RESULTS, TRAINING_DATA = map(
    bucket_address, ("uploads", "models", "results", "training_data")
)
ALL_USERS_RE = "It is set to allUsers"
ALL_AUTHENTICATED_RE = "It is set to allAuthenticatedUsers"
NO_LABELS = {"goog-terraform-provisioned": "true"}

FAILING: dict[str, FailingCase] = {
    "bucket_uniform_access_off": FailingCase(
        "uploads bucket with uniform_bucket_level_access = false",
        (set_value(UPLOADS, "uniform_bucket_level_access", False),),
        (UNIFORM,),
        (f"uniform_bucket_level_access property in {UPLOADS}",),
    ),
    "bucket_public_access_inherited": FailingCase(
        'results bucket with public_access_prevention = "inherited"',
        (set_value(RESULTS, "public_access_prevention", "inherited"),),
        (PREVENTION,),
        (f"public_access_prevention property in {RESULTS}", "It is set to inherited"),
    ),
    "models_versioning_disabled": FailingCase(
        "models bucket with versioning { enabled = false }",
        (set_value(MODELS, "versioning", [{"enabled": False}]),),
        (MODELS_VERSIONING,),
        (f"enabled property in {MODELS}", "It is set to False"),
    ),
    "models_versioning_missing": FailingCase(
        "models bucket spec with versioned = false: no versioning block",
        (set_value(MODELS, "versioning", []),),
        (MODELS_VERSIONING,),
        (f"{MODELS} (google_storage_bucket) does not have versioning property",),
    ),
    "bucket_without_access_logs": FailingCase(
        "results bucket spec with access_logged = false: no logging block",
        (set_value(RESULTS, "logging", []),),
        (ACCESS_LOGS,),
        (f"{RESULTS} (google_storage_bucket) does not have logging property",),
    ),
    "bucket_member_all_users": FailingCase(
        "uploads readable by allUsers through a google_storage_bucket_iam_member",
        (
            add_resource(
                iam(
                    "google_storage_bucket_iam_member",
                    "public_read",
                    "roles/storage.objectViewer",
                    "allUsers",
                    bucket=f"{PREFIX}-uploads",
                    expressions={"bucket": resource_ref(UPLOADS, "name")},
                )
            ),
        ),
        (PUBLIC_MEMBER,),
        ("member property in google_storage_bucket_iam_member.public_read", ALL_USERS_RE),
    ),
    "bucket_binding_all_authenticated_users": FailingCase(
        "results readable by allAuthenticatedUsers through a google_storage_bucket_iam_binding",
        (
            add_resource(
                iam(
                    "google_storage_bucket_iam_binding",
                    "results_readers",
                    "roles/storage.objectViewer",
                    members=["allAuthenticatedUsers"],
                    bucket=f"{PREFIX}-results",
                    expressions={"bucket": resource_ref(RESULTS, "name")},
                )
            ),
        ),
        (PUBLIC_BINDING,),
        (
            "members property in google_storage_bucket_iam_binding.results_readers",
            ALL_AUTHENTICATED_RE,
        ),
    ),
    "bucket_public_acl": FailingCase(
        'results bucket given predefined_acl = "publicRead" by a google_storage_bucket_acl',
        (
            add_resource(
                Resource(
                    "google_storage_bucket_acl",
                    "results",
                    {"bucket": f"{PREFIX}-results", "predefined_acl": "publicRead"},
                    {"id": True, "role_entity": True},
                    {"bucket": resource_ref(RESULTS, "name")},
                )
            ),
        ),
        (NO_ACLS,),
        ("google_storage_bucket_acl (google_storage_bucket_acl.results)",),
    ),
    "primitive_role_editor": FailingCase(
        "Dataflow account given roles/editor instead of roles/dataflow.worker",
        (
            set_value(
                'google_project_iam_member.pipeline["dataflow-runs-workers"]',
                "role",
                "roles/editor",
            ),
        ),
        (PRIMITIVE,),
        (
            'role property in google_project_iam_member.pipeline["dataflow-runs-workers"]',
            "It is set to roles/editor",
        ),
    ),
    "authoritative_project_binding": FailingCase(
        "a google_project_iam_binding, which removes every other grant of its role",
        (
            add_resource(
                iam(
                    "google_project_iam_binding",
                    "log_writers",
                    "roles/logging.logWriter",
                    members=[f"serviceAccount:ci@{PROJECT}.iam.gserviceaccount.com"],
                    project=PROJECT,
                )
            ),
        ),
        (AUTHORITATIVE,),
        ("google_project_iam_binding (google_project_iam_binding.log_writers)",),
    ),
    "function_without_labels": FailingCase(
        "on_upload function with no labels",
        (
            set_value(ON_UPLOAD, "labels", None),
            set_value(ON_UPLOAD, "effective_labels", NO_LABELS),
            set_value(ON_UPLOAD, "terraform_labels", NO_LABELS),
        ),
        (LABEL,),
        (
            f"{ON_UPLOAD} (resource that supports labels) does not have app property",
            f"{ON_UPLOAD} (resource that supports labels) does not have managed-by property",
        ),
    ),
    "bucket_wrong_managed_by_label": FailingCase(
        'training-data bucket labelled managed-by = "console"',
        (
            set_value(
                TRAINING_DATA,
                "labels",
                {**LABELS, "purpose": "training-data", "managed-by": "console"},
            ),
        ),
        (LABEL,),
        (f"managed-by property in {TRAINING_DATA}", "It is set to console"),
    ),
    "http_function_invoker_all_users": FailingCase(
        'http_function_invokers = ["allUsers"]: predict_http invokable by anyone',
        (add_resource(http_invoker("allUsers")),),
        (PUBLIC_INVOKER, PUBLIC_MEMBER),
        (
            "member property in"
            ' google_cloud_run_v2_service_iam_member.predict_http_invokers["allUsers"]',
            ALL_USERS_RE,
        ),
    ),
    "function_binding_all_authenticated_users": FailingCase(
        "on_upload invokable by allAuthenticatedUsers through a function IAM binding",
        (
            add_resource(
                iam(
                    "google_cloudfunctions2_function_iam_binding",
                    "on_upload_invokers",
                    "roles/cloudfunctions.invoker",
                    members=["allAuthenticatedUsers"],
                    cloud_function=f"{PREFIX}-on-upload",
                    location=REGION,
                    expressions={"cloud_function": resource_ref(ON_UPLOAD, "name")},
                )
            ),
        ),
        (PUBLIC_INVOKER, PUBLIC_BINDING),
        (
            "members property in google_cloudfunctions2_function_iam_binding.on_upload_invokers",
            ALL_AUTHENTICATED_RE,
        ),
    ),
    "event_function_ingress_all": FailingCase(
        'on_upload function with ingress_settings = "ALLOW_ALL"',
        (set_value(ON_UPLOAD, "ingress_settings", "ALLOW_ALL", within=("service_config", 0)),),
        (INTERNAL_ONLY,),
        (f"ingress_settings property in {ON_UPLOAD}", "It is set to ALLOW_ALL"),
    ),
    "notification_every_event_type": FailingCase(
        "uploads notification without event_types, so sent for deletes and metadata updates too",
        (set_value(NOTIFICATION, "event_types", None),),
        (NOTIFY_FINALIZE,),
        (f"event_types property in {NOTIFICATION}", "It is set to None"),
    ),
    "notification_delete_events": FailingCase(
        'uploads notification with event_types = ["OBJECT_FINALIZE", "OBJECT_DELETE"]',
        (set_value(NOTIFICATION, "event_types", ["OBJECT_FINALIZE", "OBJECT_DELETE"]),),
        (NOTIFY_FINALIZE,),
        (f"event_types property in {NOTIFICATION}", "It is set to OBJECT_DELETE"),
    ),
    "notification_without_payload": FailingCase(
        'uploads notification with payload_format = "NONE": no object resource to parse',
        (set_value(NOTIFICATION, "payload_format", "NONE"),),
        (NOTIFY_JSON,),
        (f"payload_format property in {NOTIFICATION}", "It is set to NONE"),
    ),
    "dataflow_project_pubsub_subscriber": FailingCase(
        "Dataflow account given roles/pubsub.subscriber on the whole project",
        (
            add_resource(
                iam(
                    "google_project_iam_member",
                    "pipeline",
                    "roles/pubsub.subscriber",
                    project=PROJECT,
                    index="dataflow-subscribes",
                    iteration={"for_each_expression": ref("local.project_grants")},
                    expressions={"member": ref(SA, "each.value.account", "each.value")},
                )
            ),
        ),
        (PUBSUB_PROJECT,),
        ('member property in google_project_iam_member.pipeline["dataflow-subscribes"]',),
    ),
    "topic_subscriber_grant": FailingCase(
        "Dataflow account given roles/pubsub.subscriber on the topic (every subscription of it)",
        (
            add_resource(
                iam(
                    "google_pubsub_topic_iam_member",
                    "dataflow_subscribes",
                    "roles/pubsub.subscriber",
                    unknown={"topic": True},
                    expressions={"topic": resource_ref(TOPIC, "id"), "member": sa_ref("dataflow")},
                )
            ),
        ),
        (TOPIC_PUBLISH_ONLY,),
        (
            "role property in google_pubsub_topic_iam_member.dataflow_subscribes",
            "It is set to roles/pubsub.subscriber",
        ),
    ),
    "topic_publisher_all_users": FailingCase(
        "anyone on the internet may publish fake upload notifications to the topic",
        (
            add_resource(
                iam(
                    "google_pubsub_topic_iam_member",
                    "public_publish",
                    "roles/pubsub.publisher",
                    "allUsers",
                    unknown={"topic": True},
                    expressions={"topic": resource_ref(TOPIC, "id")},
                )
            ),
        ),
        (PUBLIC_MEMBER,),
        ("member property in google_pubsub_topic_iam_member.public_publish", ALL_USERS_RE),
    ),
}

# Scenarios that must run (not be skipped) and pass on every passing case, so a
# policy that stops matching anything cannot pass silently.
ALWAYS_RUN = (
    UNIFORM,
    PREVENTION,
    MODELS_VERSIONING,
    ACCESS_LOGS,
    PUBLIC_MEMBER,
    PRIMITIVE,
    LABEL,
    INTERNAL_ONLY,
    NOTIFY_FINALIZE,
    NOTIFY_JSON,
    PUBSUB_PROJECT,
    TOPIC_PUBLISH_ONLY,
)
# predict_http's invoker is the only function invoker whose member is known at plan time.
ALSO_RUN = {"default": (PUBLIC_INVOKER,), "with_kms_key_and_extra_labels": (PUBLIC_INVOKER,)}


def passing_plans() -> dict[str, dict[str, Any]]:
    """Legitimate settings of the module's variables."""
    extra_labels = {"owner": "pathology-ml", "cost-centre": "research"}
    return {
        "default": base_plan(),
        "without_http_function": plan_json(
            base_resources(http_function=False),
            {**VARIABLES, "deploy_http_function": False, "http_function_invokers": []},
        ),
        "with_kms_key_and_extra_labels": plan_json(
            base_resources(kms_key=KMS_KEY, labels={**LABELS, **extra_labels}),
            {**VARIABLES, "kms_key_name": KMS_KEY, "labels": extra_labels},
        ),
    }


def failing_plans() -> dict[str, dict[str, Any]]:
    plans = {}
    for name, case in FAILING.items():
        plan = base_plan()
        for mutate in case.mutations:
            mutate(plan)
        plans[name] = plan
    return plans


def expected() -> dict[str, Any]:
    """What each case must do; read by run_cases.py and tests/infra/test_compliance.py."""
    passing = {
        name: {"fails": [], "passes": sorted(ALWAYS_RUN + ALSO_RUN.get(name, ()))}
        for name in passing_plans()
    }
    failing = {
        name: {
            "description": case.description,
            "fails": sorted(case.scenarios),
            "messages": list(case.messages),
        }
        for name, case in FAILING.items()
    }
    return {"passing": passing, "failing": failing}


def rendered_files() -> dict[Path, str]:
    """Every file this script owns, with its content."""
    plans = {PASSING_DIR / f"{name}.json": plan for name, plan in passing_plans().items()}
    plans.update({FAILING_DIR / f"{name}.json": plan for name, plan in failing_plans().items()})
    files = {path: json.dumps(plan, separators=(",", ":")) + "\n" for path, plan in plans.items()}
    files[EXPECTED_FILE] = json.dumps(expected(), indent=2) + "\n"
    return files


def stale_files(files: dict[Path, str]) -> list[str]:
    """Files that differ from what this script writes, or that it no longer writes."""
    stale = [
        path.relative_to(CASES_DIR).as_posix()
        for path, text in files.items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    leftovers = [*PASSING_DIR.glob("*.json"), *FAILING_DIR.glob("*.json")]
    return stale + sorted(p.relative_to(CASES_DIR).as_posix() for p in leftovers if p not in files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the cases are stale")
    args = parser.parse_args(argv)

    files = rendered_files()
    stale = stale_files(files)
    if args.check:
        if stale:
            sys.stderr.write(
                f"Stale compliance cases: {', '.join(stale)}. Regenerate them with"
                " `.venv/bin/python infra/compliance/tests/make_cases.py`.\n"
            )
        return 1 if stale else 0

    for folder in (PASSING_DIR, FAILING_DIR):
        folder.mkdir(exist_ok=True)
        for path in folder.glob("*.json"):
            if path not in files:
                path.unlink()
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    sys.stdout.write(f"Wrote {len(files)} files under {CASES_DIR} ({len(stale)} changed)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
