# The pipeline's buckets. Every bucket is regional, private (uniform bucket-level
# access, public access prevention enforced), labelled, optionally CMEK-encrypted,
# and sends usage logs to the access-logs bucket. Versioning is on where the data
# cannot be regenerated: models (the contract), training data and uploads.

# Uploaded patches. The function is triggered here and writes <name>.gradcam.png,
# <name>.prediction.json and <name>.error.json beside each upload.
resource "google_storage_bucket" "uploads" {
  name                        = local.bucket_names.uploads
  location                    = upper(var.region)
  labels                      = local.labels
  force_destroy               = var.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_retention_days
    }
    action {
      type = "Delete"
    }
  }

  logging {
    log_bucket        = google_storage_bucket.access_logs.name
    log_object_prefix = "uploads/"
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }
}

# SavedModels at gs://<prefix>-models/<model_name>/<integer version>/, the contract
# read by Beam, the function and the app. Versioning keeps a replaced model.
resource "google_storage_bucket" "models" {
  name                        = local.bucket_names.models
  location                    = upper(var.region)
  labels                      = local.labels
  force_destroy               = var.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_retention_days
    }
    action {
      type = "Delete"
    }
  }

  logging {
    log_bucket        = google_storage_bucket.access_logs.name
    log_object_prefix = "models/"
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }
}

# Beam outputs: <output>/results/, errors/, report.html, metrics.json. They can be
# regenerated from the models and the inputs, so they age out instead of being versioned.
resource "google_storage_bucket" "results" {
  name                        = local.bucket_names.results
  location                    = upper(var.region)
  labels                      = local.labels
  force_destroy               = var.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  lifecycle_rule {
    condition {
      age = var.results_nearline_after_days
    }
    action {
      type          = "SetStorageClass"
      storage_class = "NEARLINE"
    }
  }

  lifecycle_rule {
    condition {
      age = var.results_delete_after_days
    }
    action {
      type = "Delete"
    }
  }

  logging {
    log_bucket        = google_storage_bucket.access_logs.name
    log_object_prefix = "results/"
  }

  lifecycle {
    precondition {
      condition     = var.results_delete_after_days > var.results_nearline_after_days
      error_message = "results_delete_after_days must be greater than results_nearline_after_days."
    }
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }
}

# Dataflow temp and staging files: scratch space, deleted after a few days.
resource "google_storage_bucket" "dataflow_temp" {
  name                        = local.bucket_names.dataflow_temp
  location                    = upper(var.region)
  labels                      = local.labels
  force_destroy               = var.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  lifecycle_rule {
    condition {
      age = var.dataflow_temp_retention_days
    }
    action {
      type = "Delete"
    }
  }

  logging {
    log_bucket        = google_storage_bucket.access_logs.name
    log_object_prefix = "dataflow-temp/"
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }
}

# Labelled training images read by the training job.
resource "google_storage_bucket" "training_data" {
  name                        = local.bucket_names.training_data
  location                    = upper(var.region)
  labels                      = local.labels
  force_destroy               = var.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_retention_days
    }
    action {
      type = "Delete"
    }
  }

  logging {
    log_bucket        = google_storage_bucket.access_logs.name
    log_object_prefix = "training-data/"
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }
}

# Zipped function source. Object names carry the zip's MD5, so each object is
# written once and a new zip redeploys the function.
resource "google_storage_bucket" "function_source" {
  name                        = local.bucket_names.function_source
  location                    = upper(var.region)
  labels                      = local.labels
  force_destroy               = var.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  logging {
    log_bucket        = google_storage_bucket.access_logs.name
    log_object_prefix = "function-source/"
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }
}

# Cloud Storage usage and storage logs of the buckets above. It does not log to
# itself (see the CKV_GCP_62 waiver in .checkov.yaml).
resource "google_storage_bucket" "access_logs" {
  name                        = local.bucket_names.access_logs
  location                    = upper(var.region)
  labels                      = local.labels
  force_destroy               = var.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  lifecycle_rule {
    condition {
      age = var.access_log_retention_days
    }
    action {
      type = "Delete"
    }
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }
}

# Cloud Storage writes usage logs as this Google-owned group; with uniform access
# it needs objectCreator on the log bucket.
resource "google_storage_bucket_iam_member" "access_logs_writer" {
  bucket = google_storage_bucket.access_logs.name
  role   = "roles/storage.objectCreator"
  member = "group:cloud-storage-analytics@google.com"
}
