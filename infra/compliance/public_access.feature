Feature: Nothing is granted to the public
  In order that no image, model or result can be read by anyone on the internet
  As the owner of the histoscreen project
  I want no IAM grant or ACL to name allUsers or allAuthenticatedUsers

  Scenario: No IAM member grant goes to allUsers or allAuthenticatedUsers
    Given I have resource that supports member defined
    When it has member
    Then its value must not match the "^(allUsers|allAuthenticatedUsers)$" regex

  Scenario: No IAM binding grants to allUsers or allAuthenticatedUsers
    Given I have resource that supports members defined
    When it has members
    Then its value must not match the "^(allUsers|allAuthenticatedUsers)$" regex

  Scenario Outline: Buckets and objects have no ACLs (uniform access decides)
    Given I have <acl_resource> defined
    Then it must fail

    Examples:
      | acl_resource                                  |
      | google_storage_bucket_acl                     |
      | google_storage_bucket_access_control          |
      | google_storage_default_object_acl             |
      | google_storage_default_object_access_control  |
      | google_storage_object_acl                     |
      | google_storage_object_access_control          |
