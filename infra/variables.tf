# Inputs of the histoscreen root module. Only project_id and name_prefix have no default.

variable "project_id" {
  description = "Google Cloud project that holds the whole pipeline."
  type        = string
}

variable "region" {
  description = "Region for the buckets, the function, the training job, Dataflow and Artifact Registry. The buckets are regional so the Eventarc trigger can live in the same region."
  type        = string
  default     = "us-central1"
}

variable "name_prefix" {
  description = "Prefix of every resource name; buckets are named <name_prefix>-<role>, so it must be globally unique. At most 21 characters so <name_prefix>-function fits a service account id."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,19}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 4 to 21 characters of lower-case letters, digits and hyphens, start with a letter and end with a letter or digit."
  }
}

variable "labels" {
  description = "Extra labels for every resource that takes labels. app and managed-by are always set and cannot be overridden."
  type        = map(string)
  default     = {}
}

variable "model_name" {
  description = "Model name under the models bucket: gs://<name_prefix>-models/<model_name>/<integer version>/."
  type        = string
  default     = "histo-cnn"
}

variable "kms_key_name" {
  description = "Optional Cloud KMS key (projects/.../cryptoKeys/...) for the buckets, the uploads topic and the Artifact Registry repository. null keeps Google-managed encryption. The Cloud Storage, Pub/Sub and Artifact Registry service agents need roles/cloudkms.cryptoKeyEncrypterDecrypter on it."
  type        = string
  default     = null
}

variable "enable_apis" {
  description = "Enable the Google APIs the pipeline needs. Turn off where a platform team manages project services."
  type        = bool
  default     = true
}

variable "force_destroy" {
  description = "Let terraform destroy delete buckets that still hold objects. Keep false anywhere that matters."
  type        = bool
  default     = false
}

# --- Buckets -------------------------------------------------------------------

variable "dataflow_temp_retention_days" {
  description = "Objects in the dataflow-temp bucket are deleted after this many days."
  type        = number
  default     = 7
}

variable "results_nearline_after_days" {
  description = "Objects in the results bucket move to NEARLINE storage after this many days."
  type        = number
  default     = 30
}

variable "results_delete_after_days" {
  description = "Objects in the results bucket are deleted after this many days (more than results_nearline_after_days)."
  type        = number
  default     = 365
}

variable "noncurrent_version_retention_days" {
  description = "Overwritten or deleted object versions in versioned buckets (models, training-data, uploads) are kept this many days."
  type        = number
  default     = 90
}

variable "access_log_retention_days" {
  description = "Cloud Storage usage and storage logs are deleted after this many days."
  type        = number
  default     = 90
}

# --- Cloud Function ------------------------------------------------------------

variable "function_source_zip" {
  description = "Path of the zip holding the function source (functions/, histo_common/, model_export/, main.py, requirements.txt); infra/plan.sh builds it with infra/build_function_source.py."
  type        = string
  default     = "../build/function-source.zip"
}

variable "function_memory" {
  description = "Memory of each function instance. TensorFlow and the SavedModel need at least 2Gi."
  type        = string
  default     = "4Gi"
}

variable "function_cpu" {
  description = "vCPUs of each function instance (1 or 2)."
  type        = string
  default     = "2"

  validation {
    condition     = contains(["1", "2"], var.function_cpu)
    error_message = "function_cpu must be \"1\" or \"2\"."
  }
}

variable "function_timeout_seconds" {
  description = "Longest time one upload may take to score and explain."
  type        = number
  default     = 120
}

variable "function_max_instances" {
  description = "Most function instances running at once; caps cost when a folder of images lands in the uploads bucket."
  type        = number
  default     = 10
}

variable "max_image_pixels" {
  description = "MAX_IMAGE_PIXELS for the function: larger uploads are refused with an .error.json."
  type        = number
  default     = 25000000
}

variable "log_level" {
  description = "LOG_LEVEL for the function and the training job."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR"], var.log_level)
    error_message = "log_level must be DEBUG, INFO, WARNING or ERROR."
  }
}

variable "deploy_http_function" {
  description = "Also deploy predict_http, an HTTP function that scores one image per request. It is never publicly invokable."
  type        = bool
  default     = true
}

variable "http_function_invokers" {
  description = "IAM members (user:, group:, serviceAccount:) allowed to call predict_http."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.http_function_invokers : !contains(["allUsers", "allAuthenticatedUsers"], m)])
    error_message = "predict_http must not be public: remove allUsers and allAuthenticatedUsers from http_function_invokers."
  }
}

# --- The upload stream (stream.tf) ----------------------------------------------

variable "stream_message_retention_days" {
  description = "Days the uploads-stream subscription keeps unacknowledged notifications, so a stopped stream catches up when relaunched (1 to 7)."
  type        = number
  default     = 7

  validation {
    condition     = var.stream_message_retention_days >= 1 && var.stream_message_retention_days <= 7
    error_message = "stream_message_retention_days must be between 1 and 7 (Pub/Sub's limits for a subscription)."
  }
}

variable "stream_model_poll_seconds" {
  description = "How often the streaming job looks for a new model version under MODEL_URI (--model-poll-seconds in stream_command)."
  type        = number
  default     = 60

  validation {
    condition     = var.stream_model_poll_seconds >= 1
    error_message = "stream_model_poll_seconds must be at least 1."
  }
}

# --- Container images and the training job -------------------------------------

variable "artifact_repository_id" {
  description = "Artifact Registry Docker repository for the training and Dataflow images."
  type        = string
  default     = "histoscreen"
}

variable "training_image_tag" {
  description = "Tag of <region>-docker.pkg.dev/<project>/<repository>/training that the training job runs."
  type        = string
  default     = "latest"
}

variable "dataflow_image_tag" {
  description = "Tag of <region>-docker.pkg.dev/<project>/<repository>/dataflow used as the Beam SDK container in the printed Dataflow commands."
  type        = string
  default     = "latest"
}

variable "training_cpu" {
  description = "vCPUs of the training job's task."
  type        = string
  default     = "4"
}

variable "training_memory" {
  description = "Memory of the training job's task."
  type        = string
  default     = "16Gi"
}

variable "training_timeout_seconds" {
  description = "Longest time one training run may take."
  type        = number
  default     = 21600
}

variable "training_max_retries" {
  description = "Retries of a failed training task."
  type        = number
  default     = 0
}

variable "http_function_ingress" {
  description = "Ingress of predict_http. Callers always need roles/run.invoker (http_function_invokers); the default also keeps it off the internet. Set ALLOW_ALL to call it from outside Google Cloud (for example the Streamlit app on a laptop) with an identity token."
  type        = string
  default     = "ALLOW_INTERNAL_ONLY"

  validation {
    condition     = contains(["ALLOW_ALL", "ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB"], var.http_function_ingress)
    error_message = "http_function_ingress must be ALLOW_ALL, ALLOW_INTERNAL_ONLY or ALLOW_INTERNAL_AND_GCLB."
  }
}
