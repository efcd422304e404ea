# The Cloud Functions (2nd gen, python311) built from functions/ together with the
# shared histo_common/ and model_export/ packages. on_upload scores each image
# finalized in the uploads bucket and writes its outputs beside it; predict_http
# scores one image per authenticated request.

locals {
  # What the function code reads; see functions/ for their meaning.
  function_environment = {
    MODEL_URI        = local.model_uri
    MAX_IMAGE_PIXELS = tostring(var.max_image_pixels)
    LOG_LEVEL        = var.log_level
  }

  function_service_account = google_service_account.pipeline["function"].email
}

resource "google_storage_bucket_object" "function_source" {
  # Named by content: a changed zip is a new object, which redeploys the functions.
  name         = "histoscreen-function-${filemd5(var.function_source_zip)}.zip"
  bucket       = google_storage_bucket.function_source.name
  source       = var.function_source_zip
  content_type = "application/zip"
}

resource "google_cloudfunctions2_function" "on_upload" {
  name        = "${var.name_prefix}-on-upload"
  location    = var.region
  description = "Scores each image uploaded to ${local.bucket_names.uploads} and writes its Grad-CAM, prediction or error beside it."
  labels      = local.labels

  build_config {
    runtime           = "python311"
    entry_point       = "on_upload"
    service_account   = google_service_account.pipeline["build"].id
    docker_repository = google_artifact_registry_repository.images.id

    source {
      storage_source {
        bucket = google_storage_bucket.function_source.name
        object = google_storage_bucket_object.function_source.name
      }
    }
  }

  service_config {
    available_memory                 = var.function_memory
    available_cpu                    = var.function_cpu
    timeout_seconds                  = var.function_timeout_seconds
    min_instance_count               = 0
    max_instance_count               = var.function_max_instances
    max_instance_request_concurrency = 1
    # Eventarc delivers from inside Google Cloud; nothing else needs to reach it.
    ingress_settings               = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision = true
    service_account_email          = local.function_service_account
    environment_variables          = local.function_environment
  }

  event_trigger {
    trigger_region        = var.region
    event_type            = "google.cloud.storage.object.v1.finalized"
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = local.function_service_account

    event_filters {
      attribute = "bucket"
      value     = google_storage_bucket.uploads.name
    }
  }

  depends_on = [
    google_project_service.apis,
    google_artifact_registry_repository_iam_member.function_image_writer,
    google_project_iam_member.pipeline,
    google_project_iam_member.gcs_publishes_events,
    google_storage_bucket_iam_member.pipeline,
  ]
}

# Eventarc invokes on_upload as the function's own account; the grant is on this
# function's Cloud Run service only, not on every service in the project.
resource "google_cloud_run_v2_service_iam_member" "on_upload_trigger_invoker" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.on_upload.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${local.function_service_account}"
}

resource "google_cloudfunctions2_function" "predict_http" {
  count = var.deploy_http_function ? 1 : 0

  name        = "${var.name_prefix}-predict-http"
  location    = var.region
  description = "Scores one image per authenticated HTTP request with the model under ${local.model_uri}."
  labels      = local.labels

  build_config {
    runtime           = "python311"
    entry_point       = "predict_http"
    service_account   = google_service_account.pipeline["build"].id
    docker_repository = google_artifact_registry_repository.images.id

    source {
      storage_source {
        bucket = google_storage_bucket.function_source.name
        object = google_storage_bucket_object.function_source.name
      }
    }
  }

  service_config {
    available_memory                 = var.function_memory
    available_cpu                    = var.function_cpu
    timeout_seconds                  = var.function_timeout_seconds
    min_instance_count               = 0
    max_instance_count               = var.function_max_instances
    max_instance_request_concurrency = 1
    ingress_settings                 = var.http_function_ingress
    all_traffic_on_latest_revision   = true
    service_account_email            = local.function_service_account
    environment_variables            = local.function_environment
  }

  depends_on = [
    google_project_service.apis,
    google_artifact_registry_repository_iam_member.function_image_writer,
    google_project_iam_member.pipeline,
    google_storage_bucket_iam_member.pipeline,
  ]
}

# Only the listed members may call predict_http; the variable's validation refuses
# allUsers and allAuthenticatedUsers.
resource "google_cloud_run_v2_service_iam_member" "predict_http_invokers" {
  for_each = var.deploy_http_function ? toset(var.http_function_invokers) : toset([])

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.predict_http[0].name
  role     = "roles/run.invoker"
  member   = each.value
}
