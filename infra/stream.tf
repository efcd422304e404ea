# The upload stream: the uploads bucket notifies a Pub/Sub topic of every finalized
# object (JSON API payload, what beam_jobs.stream parses), and the streaming Dataflow
# job `python -m beam_jobs.stream` reads the topic through its own subscription,
# scores each new image with the latest model under MODEL_URI (polled for new
# versions) and writes windowed results under gs://<prefix>-results/stream/.
#
# The job itself is launched with the command in the stream_command output, not
# declared here: google_dataflow_flex_template_job lives in the google-beta provider
# only, a Flex Template adds a template image and spec to build and keep in step with
# the code, and a streaming job needs the Dataflow image pushed and a model trained,
# both of which happen after apply. Terraform would also cancel and relaunch the job
# on any parameter change, where an operator wants `--update` or a drain.

resource "google_pubsub_topic" "uploads" {
  name         = "${var.name_prefix}-uploads"
  labels       = local.labels
  kms_key_name = var.kms_key_name

  depends_on = [google_project_service.apis]
}

# Publishing to this topic is all the Cloud Storage service agent may do here.
resource "google_pubsub_topic_iam_member" "gcs_publishes_uploads" {
  topic  = google_pubsub_topic.uploads.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

# One message per new object generation. Overwrites finalize a new generation, so
# they are notified too; deletes, archives and metadata updates are not.
resource "google_storage_notification" "uploads" {
  bucket         = google_storage_bucket.buckets["uploads"].name
  topic          = google_pubsub_topic.uploads.id
  payload_format = "JSON_API_V1"
  event_types    = ["OBJECT_FINALIZE"]

  depends_on = [google_pubsub_topic_iam_member.gcs_publishes_uploads]
}

resource "google_pubsub_subscription" "uploads_stream" {
  name   = "${var.name_prefix}-uploads-stream"
  topic  = google_pubsub_topic.uploads.id
  labels = local.labels

  # Dataflow extends the deadline of messages it holds; this bounds a lost worker.
  ack_deadline_seconds = 60
  # A stopped stream catches up on up to a week of uploads when it is relaunched.
  message_retention_duration = "${var.stream_message_retention_days * 86400}s"

  # Never delete the subscription for inactivity: uploads may pause for weeks.
  expiration_policy {
    ttl = ""
  }
}

# The Dataflow workers read this subscription and nothing else in Pub/Sub: subscriber
# to pull and acknowledge, viewer for the subscription's metadata, which Dataflow's
# Pub/Sub source reads when the job starts. No project-level Pub/Sub role.
resource "google_pubsub_subscription_iam_member" "dataflow_reads_uploads" {
  for_each = toset(["roles/pubsub.subscriber", "roles/pubsub.viewer"])

  subscription = google_pubsub_subscription.uploads_stream.id
  role         = each.value
  member       = "serviceAccount:${google_service_account.pipeline["dataflow"].email}"
}
