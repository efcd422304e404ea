# The Cloud Functions (2nd gen, python311) built from functions/ together with the
# shared histo_common/ and model_export/ packages, one for_each over local.functions:
# on_upload scores each image finalized in the uploads bucket and writes its outputs
# beside it; predict_http (unless deploy_http_function is false) scores one image per
# authenticated request.

locals {
  # What the function code reads; see functions/ for their meaning.
  function_environment = {
    MODEL_URI        = local.model_uri
    MAX_IMAGE_PIXELS = tostring(var.max_image_pixels)
    LOG_LEVEL        = var.log_level
    # The tile budget for slides is this timeout x SLIDE_TILES_PER_SECOND (functions/settings.py).
    FUNCTION_TIMEOUT_SECONDS = tostring(var.function_timeout_seconds)
    # Where the Beam command suggested for a slide too large for the function writes.
    SLIDE_OUTPUT_URI = "gs://${local.bucket_names.results}/slides"
  }

  function_service_account = google_service_account.pipeline["function"].email

  # What differs between the two functions; the rest of their configuration is shared.
  functions = {
    on_upload = {
      description = "Scores each image uploaded to ${local.bucket_names.uploads} and writes its Grad-CAM, prediction or error beside it."
      # Eventarc delivers from inside Google Cloud; nothing else needs to reach it.
      ingress_settings = "ALLOW_INTERNAL_ONLY"
      upload_triggered = true
    }
    predict_http = {
      description      = "Scores one image per authenticated HTTP request with the model under ${local.model_uri}."
      ingress_settings = var.http_function_ingress
      upload_triggered = false
    }
  }
  deployed_functions = {
    for key, spec in local.functions : key => spec
    if key != "predict_http" || var.deploy_http_function
  }
}

resource "google_storage_bucket_object" "function_source" {
  # Named by content: a changed zip is a new object, which redeploys the functions.
  name         = "histoscreen-function-${filemd5(var.function_source_zip)}.zip"
  bucket       = google_storage_bucket.buckets["function_source"].name
  source       = var.function_source_zip
  content_type = "application/zip"
}

resource "google_cloudfunctions2_function" "functions" {
  # checkov:skip=CKV_GCP_124:checkov cannot resolve each.value.ingress_settings from a for_each over a local map and reads it as permissive. on_upload is ALLOW_INTERNAL_ONLY (compliance/function.feature checks it on the plan); predict_http takes var.http_function_ingress, ALLOW_INTERNAL_ONLY by default, and always needs roles/run.invoker.
  for_each = local.deployed_functions

  # The key is the entry point in functions/main.py; the name is it with hyphens.
  name        = "${var.name_prefix}-${replace(each.key, "_", "-")}"
  location    = var.region
  description = each.value.description
  labels      = local.labels

  build_config {
    runtime           = "python311"
    entry_point       = each.key
    service_account   = google_service_account.pipeline["build"].id
    docker_repository = google_artifact_registry_repository.images.id

    source {
      storage_source {
        bucket = google_storage_bucket.buckets["function_source"].name
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
    ingress_settings                 = each.value.ingress_settings
    all_traffic_on_latest_revision   = true
    service_account_email            = local.function_service_account
    environment_variables            = local.function_environment
  }

  dynamic "event_trigger" {
    for_each = each.value.upload_triggered ? [google_storage_bucket.buckets["uploads"].name] : []
    content {
      trigger_region        = var.region
      event_type            = "google.cloud.storage.object.v1.finalized"
      retry_policy          = "RETRY_POLICY_RETRY"
      service_account_email = local.function_service_account

      event_filters {
        attribute = "bucket"
        value     = event_trigger.value
      }
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
  name     = google_cloudfunctions2_function.functions["on_upload"].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${local.function_service_account}"
}

# Only the listed members may call predict_http; the variable's validation refuses
# allUsers and allAuthenticatedUsers.
resource "google_cloud_run_v2_service_iam_member" "predict_http_invokers" {
  for_each = var.deploy_http_function ? toset(var.http_function_invokers) : toset([])

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.functions["predict_http"].name
  role     = "roles/run.invoker"
  member   = each.value
}
