# The Docker repository for the training, Dataflow and function images, and the
# training job: a Cloud Run job that reads labelled images from the training-data
# bucket and writes a new integer version of the SavedModel under the models bucket.

resource "google_artifact_registry_repository" "images" {
  project       = var.project_id
  location      = var.region
  repository_id = var.artifact_repository_id
  format        = "DOCKER"
  description   = "histoscreen container images: training, dataflow and the functions' builds."
  labels        = local.labels
  kms_key_name  = var.kms_key_name

  depends_on = [google_project_service.apis]
}

# Training pulls its image here; Dataflow workers pull the SDK container image.
resource "google_artifact_registry_repository_iam_member" "image_readers" {
  for_each = toset(["training", "dataflow"])

  project    = var.project_id
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.pipeline[each.value].email}"
}

# The function build pushes its images to this repository instead of gcf-artifacts,
# so the build account's write access stops at one repository.
resource "google_artifact_registry_repository_iam_member" "function_image_writer" {
  project    = var.project_id
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.pipeline["build"].email}"
}

resource "google_cloud_run_v2_job" "training" {
  name     = "${var.name_prefix}-training"
  location = var.region
  labels   = local.labels

  template {
    labels     = local.labels
    task_count = 1

    template {
      service_account = google_service_account.pipeline["training"].email
      timeout         = "${var.training_timeout_seconds}s"
      max_retries     = var.training_max_retries

      containers {
        image = local.training_image
        # The model lands in gs://<prefix>-models/<model_name>/<next version>/, the
        # root the function's MODEL_URI names.
        args = [
          "--data", "gs://${google_storage_bucket.buckets["training_data"].name}/",
          "--output", "gs://${google_storage_bucket.buckets["models"].name}/",
          "--model-name", var.model_name,
        ]

        env {
          name  = "LOG_LEVEL"
          value = var.log_level
        }

        resources {
          limits = {
            cpu    = var.training_cpu
            memory = var.training_memory
          }
        }
      }
    }
  }

  depends_on = [
    google_project_service.apis,
    google_artifact_registry_repository_iam_member.image_readers,
    google_storage_bucket_iam_member.pipeline,
  ]
}
