# Where resources of an earlier layout now live, so that `terraform apply` on an
# existing deployment renames them in the state instead of destroying buckets full
# of data and recreating the functions. Safe to delete once every deployment has
# applied a plan with them.

moved {
  from = google_storage_bucket.uploads
  to   = google_storage_bucket.buckets["uploads"]
}

moved {
  from = google_storage_bucket.models
  to   = google_storage_bucket.buckets["models"]
}

moved {
  from = google_storage_bucket.results
  to   = google_storage_bucket.buckets["results"]
}

moved {
  from = google_storage_bucket.dataflow_temp
  to   = google_storage_bucket.buckets["dataflow_temp"]
}

moved {
  from = google_storage_bucket.training_data
  to   = google_storage_bucket.buckets["training_data"]
}

moved {
  from = google_storage_bucket.function_source
  to   = google_storage_bucket.buckets["function_source"]
}

moved {
  from = google_storage_bucket.access_logs
  to   = google_storage_bucket.buckets["access_logs"]
}

moved {
  from = google_cloudfunctions2_function.on_upload
  to   = google_cloudfunctions2_function.functions["on_upload"]
}

moved {
  from = google_cloudfunctions2_function.predict_http[0]
  to   = google_cloudfunctions2_function.functions["predict_http"]
}
