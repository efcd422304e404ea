# One service account per unit, each granted only what its code does. Bucket grants
# are on single buckets; the few project-level roles are the ones Google offers no
# narrower scope for. No primitive roles (owner, editor, viewer) anywhere.

locals {
  service_accounts = {
    function = "histoscreen function: reads uploads and models, writes results beside each upload."
    dataflow = "histoscreen Dataflow workers: read uploads, models and the uploads-stream subscription, write results and temp files."
    training = "histoscreen training job: reads training data, writes versioned SavedModels."
    build    = "histoscreen function build: turns the function source into a container."
  }

  # Keys are static so for_each works before the accounts' emails are known.
  bucket_grants = {
    "function-reads-uploads" = { account = "function", bucket = "uploads", role = "roles/storage.objectViewer" }
    # objectUser, not objectCreator: a re-upload's outputs replace the old ones, and
    # overwriting an object needs delete permission.
    "function-writes-uploads"      = { account = "function", bucket = "uploads", role = "roles/storage.objectUser" }
    "function-reads-models"        = { account = "function", bucket = "models", role = "roles/storage.objectViewer" }
    "dataflow-reads-uploads"       = { account = "dataflow", bucket = "uploads", role = "roles/storage.objectViewer" }
    "dataflow-reads-models"        = { account = "dataflow", bucket = "models", role = "roles/storage.objectViewer" }
    "dataflow-writes-results"      = { account = "dataflow", bucket = "results", role = "roles/storage.objectAdmin" }
    "dataflow-writes-temp"         = { account = "dataflow", bucket = "dataflow_temp", role = "roles/storage.objectAdmin" }
    "training-reads-training-data" = { account = "training", bucket = "training_data", role = "roles/storage.objectViewer" }
    "training-reads-models"        = { account = "training", bucket = "models", role = "roles/storage.objectViewer" }
    "training-writes-models"       = { account = "training", bucket = "models", role = "roles/storage.objectCreator" }
    "build-reads-function-source"  = { account = "build", bucket = "function_source", role = "roles/storage.objectViewer" }
  }

  project_grants = {
    # Eventarc checks this on the trigger's account before delivering an event.
    "function-receives-events" = { account = "function", role = "roles/eventarc.eventReceiver" }
    # Dataflow workers run on VMs in this project; the role has no narrower scope.
    "dataflow-runs-workers" = { account = "dataflow", role = "roles/dataflow.worker" }
    # Build logs; Cloud Logging has no narrower scope for writing them.
    "build-writes-logs" = { account = "build", role = "roles/logging.logWriter" }
  }
}

resource "google_service_account" "pipeline" {
  for_each = local.service_accounts

  project      = var.project_id
  account_id   = "${var.name_prefix}-${each.key}"
  display_name = "${var.name_prefix} ${each.key}"
  description  = each.value

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket_iam_member" "pipeline" {
  for_each = local.bucket_grants

  bucket = google_storage_bucket.buckets[each.value.bucket].name
  role   = each.value.role
  member = "serviceAccount:${google_service_account.pipeline[each.value.account].email}"
}

resource "google_project_iam_member" "pipeline" {
  for_each = local.project_grants

  project = var.project_id
  role    = each.value.role
  member  = "serviceAccount:${google_service_account.pipeline[each.value.account].email}"
}

# The Cloud Storage service agent publishes object-finalize events to the Pub/Sub
# topic behind the function's Eventarc trigger. Eventarc creates that topic itself,
# so the grant cannot be narrower; the stream's own topic has its own grant in
# stream.tf.
resource "google_project_iam_member" "gcs_publishes_events" {
  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}
