# The pipeline's buckets, one for_each over local.bucket_specs. Every bucket is
# regional, private (uniform bucket-level access, public access prevention enforced),
# labelled with its purpose, optionally CMEK-encrypted, and sends usage logs to the
# access-logs bucket. Versioning is on where the data cannot be regenerated: models
# (the contract), training data and uploads. A bucket is named
# <name_prefix>-<key with "-" for "_"> (local.bucket_names in main.tf).

locals {
  # What a spec leaves out.
  bucket_defaults = {
    versioned       = false
    lifecycle_rules = []
    access_logged   = true # usage logs go to the access-logs bucket
  }
  # A lifecycle rule acts on objects older than age days, or on versions noncurrent
  # for noncurrent_days; it moves them to storage_class, or deletes them when null.
  lifecycle_rule_defaults = { age = null, noncurrent_days = null, storage_class = null }

  bucket_specs = { for key, spec in {
    # Uploaded images. The function is triggered here and writes <name>.gradcam.png,
    # <name>.prediction.json and <name>.error.json beside each upload; the stream
    # hears of each new object through the notification in stream.tf.
    uploads = {
      purpose         = "uploads"
      versioned       = true
      lifecycle_rules = [{ noncurrent_days = var.noncurrent_version_retention_days }]
    }
    # SavedModels at gs://<prefix>-models/<model_name>/<integer version>/, the contract
    # read by Beam, the function and the app. Versioning keeps a replaced model.
    models = {
      purpose         = "models"
      versioned       = true
      lifecycle_rules = [{ noncurrent_days = var.noncurrent_version_retention_days }]
    }
    # Beam outputs: <output>/results/, errors/, report.html, metrics.json. They can be
    # regenerated from the models and the inputs, so they age out instead of being versioned.
    results = {
      purpose = "results"
      lifecycle_rules = [
        { age = var.results_nearline_after_days, storage_class = "NEARLINE" },
        { age = var.results_delete_after_days },
      ]
    }
    # Dataflow temp and staging files: scratch space, deleted after a few days.
    dataflow_temp = {
      purpose         = "dataflow-scratch"
      lifecycle_rules = [{ age = var.dataflow_temp_retention_days }]
    }
    # Labelled training images read by the training job.
    training_data = {
      purpose         = "training-data"
      versioned       = true
      lifecycle_rules = [{ noncurrent_days = var.noncurrent_version_retention_days }]
    }
    # Zipped function source. Object names carry the zip's MD5, so each object is
    # written once and a new zip redeploys the functions.
    function_source = {
      purpose = "function-source"
    }
    # Cloud Storage usage and storage logs of the buckets above. It does not log to
    # itself (see the CKV_GCP_62 waiver in .checkov.yaml).
    access_logs = {
      purpose         = "access-logs"
      lifecycle_rules = [{ age = var.access_log_retention_days }]
      access_logged   = false
    }
  } : key => merge(local.bucket_defaults, spec) }
}

resource "google_storage_bucket" "buckets" {
  for_each = local.bucket_specs

  name                        = local.bucket_names[each.key]
  location                    = upper(var.region)
  labels                      = merge(local.labels, { purpose = each.value.purpose })
  force_destroy               = var.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  dynamic "versioning" {
    for_each = each.value.versioned ? [true] : []
    content {
      enabled = true
    }
  }

  dynamic "lifecycle_rule" {
    for_each = [for rule in each.value.lifecycle_rules : merge(local.lifecycle_rule_defaults, rule)]
    content {
      condition {
        age                        = lifecycle_rule.value.age
        days_since_noncurrent_time = lifecycle_rule.value.noncurrent_days
      }
      action {
        type          = lifecycle_rule.value.storage_class == null ? "Delete" : "SetStorageClass"
        storage_class = lifecycle_rule.value.storage_class
      }
    }
  }

  # By name, not by reference: the access-logs bucket is an instance of this same
  # resource, and Cloud Storage does not check that the log bucket exists when
  # logging is configured (logs are delivered hourly, long after apply).
  dynamic "logging" {
    for_each = each.value.access_logged ? [local.bucket_names.access_logs] : []
    content {
      log_bucket        = logging.value
      log_object_prefix = "${replace(each.key, "_", "-")}/"
    }
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  lifecycle {
    precondition {
      condition     = each.key != "results" || var.results_delete_after_days > var.results_nearline_after_days
      error_message = "results_delete_after_days must be greater than results_nearline_after_days."
    }
  }
}

# Cloud Storage writes usage logs as this Google-owned group; with uniform access
# it needs objectCreator on the log bucket.
resource "google_storage_bucket_iam_member" "access_logs_writer" {
  bucket = google_storage_bucket.buckets["access_logs"].name
  role   = "roles/storage.objectCreator"
  member = "group:cloud-storage-analytics@google.com"
}
