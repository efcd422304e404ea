# What the other units need to find the deployed pipeline, and commands ready to paste.

locals {
  # The Dataflow flags both Beam jobs are launched with: the workers run as the
  # dataflow account, in the Beam SDK image from Artifact Registry.
  dataflow_options = join(" ", [
    "--runner DataflowRunner",
    "--project ${var.project_id}",
    "--region ${var.region}",
    "--temp_location gs://${google_storage_bucket.buckets["dataflow_temp"].name}/tmp",
    "--staging_location gs://${google_storage_bucket.buckets["dataflow_temp"].name}/staging",
    "--service_account_email ${google_service_account.pipeline["dataflow"].email}",
    "--sdk_container_image ${local.dataflow_image}",
  ])
}

output "bucket_names" {
  description = "Bucket names by role."
  value       = { for key, bucket in google_storage_bucket.buckets : key => bucket.name }
}

output "uploads_bucket" {
  description = "Images copied here are scored by the function."
  value       = google_storage_bucket.buckets["uploads"].name
}

output "models_bucket" {
  description = "SavedModels live at gs://<models_bucket>/<model_name>/<version>/."
  value       = google_storage_bucket.buckets["models"].name
}

output "results_bucket" {
  description = "Beam scoring and evaluation outputs."
  value       = google_storage_bucket.buckets["results"].name
}

output "model_uri" {
  description = "The model root the function and Beam load (latest integer version inside)."
  value       = local.model_uri
}

output "function_name" {
  description = "The upload-triggered function."
  value       = google_cloudfunctions2_function.functions["on_upload"].name
}

output "http_function_name" {
  description = "The HTTP scoring function, or null when deploy_http_function is false."
  value       = var.deploy_http_function ? google_cloudfunctions2_function.functions["predict_http"].name : null
}

output "http_function_url" {
  description = "URL of predict_http (callers need roles/run.invoker and an identity token)."
  value       = var.deploy_http_function ? google_cloudfunctions2_function.functions["predict_http"].url : null
}

output "service_accounts" {
  description = "Service account emails by unit."
  value       = { for unit, sa in google_service_account.pipeline : unit => sa.email }
}

output "training_image" {
  description = "The image the training job runs; push it before executing the job."
  value       = local.training_image
}

output "dataflow_image" {
  description = "The Beam SDK container image the Dataflow commands use."
  value       = local.dataflow_image
}

output "training_job_name" {
  description = "The Cloud Run job that trains and exports a new model version."
  value       = google_cloud_run_v2_job.training.name
}

output "upload_command" {
  description = "Score one image with the function; its outputs appear beside it."
  value       = "gsutil cp image.png gs://${google_storage_bucket.buckets["uploads"].name}/"
}

output "train_command" {
  description = "Run the training job and wait for it."
  value       = "gcloud run jobs execute ${google_cloud_run_v2_job.training.name} --project ${var.project_id} --region ${var.region} --wait"
}

output "docker_push_commands" {
  description = "Tag and push locally built training and Dataflow images."
  value = join(" && ", [
    "gcloud auth configure-docker ${var.region}-docker.pkg.dev",
    "docker push ${local.training_image}",
    "docker push ${local.dataflow_image}",
  ])
}

output "score_command" {
  description = "Score every image in the uploads bucket with Beam on Dataflow (change run1 per run)."
  value = join(" ", [
    "python -m beam_jobs.score",
    "--input 'gs://${google_storage_bucket.buckets["uploads"].name}/**.png'",
    "--model ${local.model_uri}",
    "--output gs://${google_storage_bucket.buckets["results"].name}/run1/",
    local.dataflow_options,
  ])
}

output "uploads_topic" {
  description = "The Pub/Sub topic the uploads bucket notifies of each finalized object (JSON API payload)."
  value       = google_pubsub_topic.uploads.id
}

output "stream_subscription" {
  description = "The subscription the streaming job reads, as its --subscription flag takes it."
  value       = google_pubsub_subscription.uploads_stream.id
}

output "stream_command" {
  description = "Launch the streaming scoring job on Dataflow; it scores every image finalized in the uploads bucket from then on (and up to stream_message_retention_days of backlog)."
  value = join(" ", [
    "python -m beam_jobs.stream",
    "--subscription ${google_pubsub_subscription.uploads_stream.id}",
    "--model ${local.model_uri}",
    "--output gs://${google_storage_bucket.buckets["results"].name}/stream",
    "--model-poll-seconds ${var.stream_model_poll_seconds}",
    "--streaming",
    "--enable_streaming_engine",
    "--job_name ${var.name_prefix}-stream",
    local.dataflow_options,
  ])
}
