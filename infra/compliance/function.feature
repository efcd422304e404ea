Feature: The functions are not publicly invokable
  In order that only the upload trigger and named callers can run the model
  As the owner of the histoscreen project
  I want no public invoker on any function and the event function closed to outside traffic

  Scenario Outline: Nobody outside the project can invoke a function through <invoker_resource>
    Given I have <invoker_resource> defined
    When it has <property>
    Then its value must not match the "^(allUsers|allAuthenticatedUsers)$" regex

    Examples:
      | invoker_resource                           | property |
      | google_cloud_run_v2_service_iam_member     | member   |
      | google_cloud_run_v2_service_iam_binding    | members  |
      | google_cloud_run_service_iam_member        | member   |
      | google_cloud_run_service_iam_binding       | members  |
      | google_cloudfunctions2_function_iam_member | member   |
      | google_cloudfunctions2_function_iam_binding | members |

  Scenario: The upload-triggered function accepts internal traffic only
    Given I have google_cloudfunctions2_function defined
    When it has event_trigger
    Then it must contain service_config
    And it must contain ingress_settings
    And its value must be ALLOW_INTERNAL_ONLY
