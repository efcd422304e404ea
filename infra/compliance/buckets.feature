Feature: Storage buckets are private, uniform and logged
  In order to keep patient-derived images and models out of public reach
  As the owner of the histoscreen project
  I want every bucket to refuse public access and per-object ACLs, and to be audited

  Scenario: Buckets use uniform bucket-level access
    Given I have google_storage_bucket defined
    Then it must contain uniform_bucket_level_access
    And its value must be true

  Scenario: Buckets enforce public access prevention
    Given I have google_storage_bucket defined
    Then it must contain public_access_prevention
    And its value must be enforced

  Scenario: The models bucket keeps every object version
    Given I have google_storage_bucket defined
    When its name is ".*-models$" regex
    Then it must contain versioning
    And it must contain enabled
    And its value must be true

  Scenario: Buckets send usage logs to the access-logs bucket
    Given I have google_storage_bucket defined
    When its name is not ".*-access-logs$" regex
    Then it must contain logging
    And it must contain log_bucket
    And its value must match the ".*-access-logs$" regex
