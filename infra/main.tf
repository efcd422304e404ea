# histoscreen on Google Cloud: the root module. Buckets are in buckets.tf, service
# accounts and their grants in iam.tf, the two functions in function.tf, the image
# registry and the training job in training.tf, the upload stream (notification,
# Pub/Sub, the Dataflow job's launch) in stream.tf. Names here are the names
# the Python code reads (see the project's ARCHITECTURE.md).

provider "google" {
  project = var.project_id
  region  = var.region
}

# The Cloud Storage service agent publishes the object-finalize events that Eventarc
# delivers to the function.
data "google_storage_project_service_account" "gcs" {
  project = var.project_id
}

locals {
  # app and managed-by come last so a caller's labels cannot drop them.
  labels = merge(var.labels, {
    app        = "histoscreen"
    managed-by = "terraform"
  })

  # <name_prefix>-<role>, the names the code and the docs use (see buckets.tf).
  bucket_names = { for key in keys(local.bucket_specs) : key => "${var.name_prefix}-${replace(key, "_", "-")}" }

  # The function picks the latest integer version under this root.
  model_uri = "gs://${local.bucket_names.models}/${var.model_name}"

  image_repository = "${var.region}-docker.pkg.dev/${var.project_id}/${var.artifact_repository_id}"
  training_image   = "${local.image_repository}/training:${var.training_image_tag}"
  dataflow_image   = "${local.image_repository}/dataflow:${var.dataflow_image_tag}"

  apis = toset([
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
  ])
}

resource "google_project_service" "apis" {
  for_each = var.enable_apis ? local.apis : toset([])

  project = var.project_id
  service = each.value

  # Other workloads in the project may use the same APIs.
  disable_on_destroy = false
}
