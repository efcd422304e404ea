Feature: The upload stream hears only new objects and reads only its own subscription
  In order that the streaming job scores each new upload and can do nothing else in Pub/Sub
  As the owner of the histoscreen project
  I want bucket notifications for finalized objects only, in the JSON API format the
  job parses, and Pub/Sub rights granted on the one topic or subscription they are for

  Scenario: Upload notifications are sent for new objects only
    Given I have google_storage_notification defined
    Then it must contain event_types
    And its value must match the "^OBJECT_FINALIZE$" regex

  Scenario: Upload notifications carry the object's JSON API resource
    Given I have google_storage_notification defined
    Then it must contain payload_format
    And its value must be JSON_API_V1

  Scenario: Project-level Pub/Sub roles go to the Cloud Storage service agent alone
    Given I have google_project_iam_member defined
    When its role is "^roles/pubsub\." regex
    Then it must contain member
    And its value must match the "^serviceAccount:service-[0-9]+@gs-project-accounts\.iam\.gserviceaccount\.com$" regex

  Scenario: Grants on a topic only let it be published to
    Given I have google_pubsub_topic_iam_member defined
    Then it must contain role
    And its value must be roles/pubsub.publisher
